"""USCL's POCUS fine-tuning protocol (§B.8, D-8): the one implementation, for notebooks 02 and 07.

Chen et al., MICCAI 2021, reproduction notes ``dmae_uscl_pumit.md`` §B.8 and D-8: the pretrained
ResNet-18's last residual block and a new linear layer are fine-tuned on each of 5
patient-grouped POCUS folds; the paper reports the accuracy at the epoch with the best *test*
accuracy (the released script), and we report the honest rule (a validation split of the
training folds picks the epoch) beside it. ``partial_ft_folds`` is that protocol; notebook 02
calls it through ``pocus_protocol`` and notebook 07 through ``evaluate(..., "partial_ft")`` /
``evaluate(..., "uscl_pocus")``.

**Input convention (one for both notebooks).** Frames are *stretched* to S x S
(``POCUS_RESIZE``), as the released script's ``Resize((224, 224))`` does (padding would change
the scale and add black borders the paper never trained on), kept in [0, 1], and normalised by
the encoder's recorded ``input_norm`` through ``uslib.models.adapter.adapt_encoder`` (USCL:
``(x - 0.5) / 0.25``, the paper's ``Normalize(0.5, 0.25)``). The optional train augmentation
(``RandomResizedCrop`` + flip) acts on the [0, 1] image; crops, bilinear resizes and flips
commute with the affine normalisation, so this equals the paper's augment-then-normalise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from torch import nn

from uslib.config import EvalConfig, OptimConfig
from uslib.data.schema import group_of
from uslib.data.sources import pocus_root
from uslib.data.splits import fold_pairs, grouped_kfold
from uslib.data.transforms import USCLAugment
from uslib.evaluation.finetune import finetune_classifier
from uslib.methods.uscl import USCL
from uslib.models.adapter import adapt_encoder

if TYPE_CHECKING:
    from uslib.methods.uscl import USCLConfig

POCUS_RESIZE = "stretch"
"""How POCUS frames become S x S (see the module docstring)."""

__all__ = ["POCUS_RESIZE", "RecordAugment", "partial_ft_folds", "pocus_protocol", "pocus_root",
           "protocol_folds", "summarize_protocol"]  # fmt: skip


class RecordAugment:
    """POCUS fine-tuning train augmentation of a [0, 1] record: crop and flip (§B.8).

    ``RandomResizedCrop(S, scale (0.8, 1), ratio (0.8, 1.25))`` and a horizontal flip, with its
    own generator (seeded); no normalisation (the encoder adapter applies it).
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.aug = USCLAugment(size, jitter=0.0, mean=0.0, std=1.0)
        self.rng = np.random.default_rng(seed)

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``record`` with an augmented ``image``."""
        return {**record, "image": self.aug(record["image"], self.rng)}


def partial_ft_folds(
    encoder: nn.Module,
    folds: Sequence[tuple[Any, Any]],
    cfg: EvalConfig,
    *,
    num_classes: int,
    selects: Sequence[str] = ("test", "val"),
    augment_size: int | None = None,
    val_fraction: float = 0.2,
    shared_run: bool = True,
    seed: int = 0,
    optim: OptimConfig | None = None,
) -> pd.DataFrame:
    """USCL's partial fine-tuning on every fold with the requested selection rules (§B.8, D-8).

    Per fold ``k`` the last residual block and a new linear layer train (``mode="partial"``,
    ``cfg``'s lr / weight decay / epochs / batch size on USCL's Adam + cosine recipe; seed
    ``seed + k``). ``"test"`` picks the epoch with the best *test-fold* accuracy (the released
    script: optimistic); ``"val"`` picks it on a patient-grouped ``val_fraction`` split of the
    training folds, which is then not trained on (honest). With ``shared_run`` all rules come from
    one run per fold (half the cost; with ``"val"`` the test-selected row then trains on 80 % of
    the training folds), else one run per rule.

    Args:
        encoder: backbone taking [0, 1] images (``adapt_encoder`` applied); not modified.
        folds: ``[(train_records, test_records), ...]``.
        cfg: fine-tuning settings.
        num_classes: C.
        selects: rules, from ``"test"`` and ``"val"``.
        augment_size: crop + flip train augmentation at this side (None: none).
        val_fraction: validation share for ``"val"``.
        shared_run: one run per fold for all rules.
        seed: base seed.
        optim: optimiser override (default ``finetune.default_finetune_optim(cfg, "partial")``).

    Returns:
        One row per fold and rule: ``fold, select, accuracy, best_epoch, last_accuracy, n_test,
        n_correct`` (accuracies as fractions; ``last_accuracy`` = no selection at all).
    """
    rows = []
    for k, (train, test) in enumerate(folds):
        aug = RecordAugment(augment_size, seed + k) if augment_size else None
        for sel in [tuple(selects)] if shared_run else [(s,) for s in selects]:
            res = finetune_classifier(encoder, train, test, cfg, num_classes=num_classes,
                                      mode="partial", select=sel, val_fraction=val_fraction,
                                      seed=seed + k, train_transform=aug, optim=optim)  # fmt: skip
            n = len(res.y_true)
            for s in sel:
                acc = res.accuracy_at(s)
                rows.append({"fold": k, "select": s, "accuracy": acc,
                             "best_epoch": res.best_epochs[s], "last_accuracy": res.last_accuracy,
                             "n_test": n, "n_correct": round(acc * n)})  # fmt: skip
    return pd.DataFrame(rows)


def protocol_folds(
    cfg: USCLConfig, data_root: str | Path | None = None
) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """The downstream folds ``[(train, test), ...]`` of the POCUS protocol (§B.8), [0, 1] records.

    * POCUS layout: the extracted frames of the covid / pneumonia / regular clips (viral and the
      uncertain clip dropped), stretched to ``cfg.data.img_size``, with the layout's
      patient-grouped ``fold`` column; the first ``cfg.eval.folds`` folds serve as test folds.
    * synthetic (``data_root=None``): ``3 * n_per_class`` lung stills of an independent split,
      never seen in pretraining, in ``cfg.eval.folds`` folds grouped by scan, class-stratified.
    """
    root = pocus_root(data_root)
    if root is not None:
        from uslib.data.sources import RecordDataset, pocus_items

        items = pocus_items(root, "frames")
        ds: Any = RecordDataset(items, img_size=cfg.data.img_size, resize=POCUS_RESIZE)
        records = [ds[i] for i in range(len(ds))]
        pairs = fold_pairs([it["meta"]["fold"] for it in items])[: min(cfg.eval.folds, 5)]
    else:
        from uslib.data.synthetic import SyntheticStills

        d = cfg.data
        ds = SyntheticStills(d.task, "test", d.n_per_class, d, seed=d.seed + 1)
        records = [ds[i] for i in range(len(ds))]
        labels = [int(r["label"]) for r in records]
        groups = [group_of(r) for r in records]
        pairs = fold_pairs(grouped_kfold(groups, cfg.eval.folds, seed=cfg.seed, labels=labels))
    return [([records[i] for i in tr], [records[i] for i in te]) for tr, te in pairs]


def pocus_protocol(
    encoder: nn.Module,
    folds_data: list[tuple[Any, Any]],
    cfg: USCLConfig,
    init: str = "uscl",
    input_norm: tuple[float, float] | None = USCL.input_norm,
) -> pd.DataFrame:
    """Notebook 02's call of ``partial_ft_folds``: both rules, crop + flip, ``cfg``'s settings.

    ``encoder`` is the raw pretrained backbone; ``input_norm`` (default USCL's recorded
    ``(0.5, 0.25)``, the ``input_norm`` of its ``encoder.yaml``) is applied by the adapter.
    Settings: ``cfg.eval`` (paper: Adam 0.01, wd 1e-4, cosine, 100 epochs, batch 32),
    ``cfg.protocol_val_fraction``, ``cfg.protocol_shared_run``, ``cfg.seed``.

    Returns:
        One row per fold and rule: ``init, fold, select, accuracy, best_epoch, last_accuracy,
        n_test, n_correct``.
    """
    n_cls = 1 + max(max(int(r["label"]) for tr, _ in folds_data for r in tr), 2)
    rows = partial_ft_folds(
        adapt_encoder(encoder, norm=input_norm), folds_data, cfg.eval,
        num_classes=n_cls, augment_size=cfg.data.img_size, val_fraction=cfg.protocol_val_fraction,
        shared_run=cfg.protocol_shared_run, seed=cfg.seed,
    )  # fmt: skip
    rows.insert(0, "init", init)
    return rows


def summarize_protocol(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std over folds and the pooled accuracy (summed confusion matrices, §B.8), in %.

    Returns:
        One row per ``(init, select)``: ``folds``, ``mean``, ``std`` (ddof 1) and ``pooled``
        (total correct / total test items: the paper's "total accuracy").
    """
    g = per_fold.groupby(["init", "select"], sort=False)
    out = g["accuracy"].agg(folds="count", mean="mean", std="std")
    out["pooled"] = g["n_correct"].sum() / g["n_test"].sum()
    out[["mean", "std", "pooled"]] *= 100.0
    return out.reset_index()
