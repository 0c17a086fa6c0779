"""Load official checkpoints from a local file onto uslib modules (never downloads).

``load_official(model, path, kind)`` reads the file, unwraps its container, renames keys with the
kind's filter (timm's ``checkpoint_filter_fn`` idea), adapts shapes that differ for a known reason
(RGB -> grey patch filters, position tables, relative-position tables) and loads strictly. Key
layouts per kind:

* ``"tinyusfm"``: plain state dict, keys ``model.<timm ViT key>`` (also ``module.model.`` /
  ``module.``); ``head.*`` dropped. Into ``vit_tiny_usfm``. Ref: TinyUSFM notes §2.2.
* ``"usfm"``: plain state dict of flat BEiT keys (``blocks.N.attn.qkv.weight``, ``q_bias``,
  ``v_bias``, ``relative_position_bias_table``, ``gamma_1/2``, ``fc_norm``); buffers
  ``relative_position_index`` and ``head.*`` dropped. Into ``usfm_vit_base``. Ref: §2.2.
* ``"mae"`` / ``"dmae"``: ``{"model": state_dict}`` with MAE encoder keys (``cls_token``,
  ``pos_embed``, ``patch_embed.proj``, ``blocks.N.*``, ``norm``); the decoder (``decoder_*``,
  ``mask_token``) and DMAE's feature projection are reported as ignored. Into ``vit_base`` /
  ``vit_large`` (fine-tuned checkpoints carry ``fc_norm``: build with ``global_pool="avg"``).
  Ref: DMAE notes §A.2, §A.8.
* ``"mae_decoder"``: the same file's ``decoder_*`` + ``mask_token`` keys into a ``MAEDecoder``.
* ``"uscl"``: USCL ``best_model.pth`` (``ResNetSimCLR``): ``features.<i>`` in torchvision child
  order (0 conv1, 1 bn1, 4-7 layer1-4); heads ``l1``, ``l2``, ``fc`` ignored as in the POCUS
  protocol. Into ``resnet18``. Ref: USCL notes §B.8, §B.10.
* ``"openus"``: an OpenUS training checkpoint (``checkpoint{epoch:04}.pth``; no weights are
  released yet, notes §1.7): ``{"student": {module.backbone.*, module.head.*}, "teacher":
  {backbone.*, head.*}, "optimizer", "epoch", "args", "ibot_loss"}``. The **teacher** is read
  (OpenUS evaluates the teacher backbone, §1.5). VMamba v2 layout, channel-first: stem
  ``patch_embed.{0,2,5,7}`` (conv, LN, [GELU], conv, LN; the odd indices are Identity/GELU),
  ``layers.i.blocks.j.{norm,op,norm2,mlp.fc1,mlp.fc2}``, ``layers.i.downsample.{1,3}`` (conv,
  LN), ``outnorm{i}``, ``masked_embed`` [1, C]; heads and the SimMIM ``decoder*`` are ignored.
  Into ``vmamba_small`` (``use_mask_token=True`` to keep ``masked_embed``). Ref: §1.1, §1.7.
* ``"vmamba"``: the same backbone layout in ``{"model": ...}`` (the ImageNet VMamba-S file
  ``vssm_small_0229_ckpt_epoch_222.pth`` OpenUS starts from, §1.1); ``classifier.*`` ignored,
  and it has no ``outnorm{i}``: load with ``strict=False`` and read ``missing``.
* ``"pumit"``: Lightning ``{"state_dict": ...}`` of ``ViTForMIM`` (tokenizer removed). [NOT
  VERIFIED]: the notes give no key list, so EVA-02 names are assumed (``q_bias``/``v_bias``,
  ``inner_attn_ln``, ``mlp.w1/w2/ffn_ln/w3``) after stripping ``model.``/``vit.``/``encoder.``
  prefixes, and renamed to timm's EVA names. Into ``spad_vit_base``. Ref: PUMIT notes §C.11.

A key whose top-level module the model does not have (a decoder, a head) is *ignored* and listed
in the report; any other key the model lacks is *unexpected*. Missing keys, unexpected keys and
unexplained shape mismatches raise ``CheckpointError`` listing the first ``max_list`` of each.
"""

from __future__ import annotations

import argparse
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import resize_rel_pos_bias_table
from torch import nn

from uslib.ops.pos_embed import resample_pos_embed, resample_pos_embed_3d

KINDS = ("tinyusfm", "usfm", "mae", "dmae", "mae_decoder", "uscl", "pumit", "openus", "vmamba")

_PREFIXES = {
    "tinyusfm": ("module.model.", "model.", "module.", "backbone."),
    "usfm": ("module.", "model.", "backbone.", "encoder."),
    "mae": ("module.",),
    "dmae": ("module.",),
    "mae_decoder": ("module.",),
    "uscl": ("module.",),
    "pumit": ("model.", "vit.", "encoder.", "backbone.", "module."),
    "openus": ("module.backbone.", "backbone.", "module."),
    "vmamba": ("module.", "backbone."),
}
_TV_CHILDREN = {0: "conv1", 1: "bn1", 4: "layer1", 5: "layer2", 6: "layer3", 7: "layer4"}
# (old, new) renames applied after prefix stripping: entries starting with "." replace a substring,
# the others replace a key prefix.
_RENAMES: dict[str, list[tuple[str | re.Pattern[str], str]]] = {
    "uscl": [(f"features.{i}.", f"{name}.") for i, name in _TV_CHILDREN.items()],
    "mae_decoder": [
        ("decoder_embed.", "embed."),
        ("decoder_pos_embed", "pos_embed"),
        ("decoder_blocks.", "blocks."),
        ("decoder_norm.", "norm."),
        ("decoder_pred.", "pred."),
    ],
    "pumit": [
        (".attn.q_bias", ".attn.q_proj.bias"),
        (".attn.v_bias", ".attn.v_proj.bias"),
        (".attn.inner_attn_ln.", ".attn.norm."),
        (".mlp.ffn_ln.", ".mlp.norm."),
        (".mlp.w1.", ".mlp.fc1_g."),
        (".mlp.w2.", ".mlp.fc1_x."),
        (".mlp.w3.", ".mlp.fc2."),
    ],
}
# VMamba v2 (channel-first) -> uslib.models.vmamba; regex entries rename by pattern (§1.1)
_VMAMBA_RENAMES: list[tuple[str | re.Pattern[str], str]] = [
    ("patch_embed.0.", "stem.0.conv."),
    ("patch_embed.2.", "stem.0.norm."),
    ("patch_embed.5.", "stem.2.conv."),
    ("patch_embed.7.", "stem.2.norm."),
    (re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\."), r"stages.\1.\2."),
    (re.compile(r"^layers\.(\d+)\.downsample\.1\."), r"downsamples.\1.conv."),
    (re.compile(r"^layers\.(\d+)\.downsample\.3\."), r"downsamples.\1.norm."),
    (re.compile(r"^outnorm(\d+)\."), r"out_norms.\1."),
    (".mlp.fc1.", ".mlp.0."),
    (".mlp.fc2.", ".mlp.2."),
    ("masked_embed", "mask_token"),
]
_RENAMES["openus"] = _RENAMES["vmamba"] = _VMAMBA_RENAMES
# container keys tried first, per kind, before the generic _WRAPPERS
_PARTS = {"openus": ("teacher",)}
_ONLY = {"mae_decoder": ("decoder_", "mask_token")}  # kinds reading one part of a shared file
_DROP = ("relative_position_index", "rope.")  # derived buffers, rebuilt by the model
_WRAPPERS = ("model", "state_dict", "module")  # container keys unwrapped by read_state_dict


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message lists why."""


@dataclass
class LoadReport:
    """What ``load_official`` did.

    Attributes:
        path: the file read.
        kind: the layout used.
        loaded: model keys filled from the file.
        adapted: key -> how its tensor was adapted (channels summed, table resampled ...).
        ignored: file keys with no place in the model (decoders, heads, derived buffers).
        missing: model keys absent from the file (non-empty only with ``strict=False``).
        unexpected: file keys the model lacks (non-empty only with ``strict=False``).
    """

    path: str
    kind: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.kind} checkpoint {self.path}: {len(self.loaded)} tensors loaded, "
            f"{len(self.adapted)} adapted, {len(self.ignored)} ignored, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected"
        )


def read_state_dict(
    path: str | Path, trusted: bool = False, parts: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Read a ``.pth``/``.ckpt``/``.safetensors`` file; unwrap ``model``/``state_dict``/``module``.

    Args:
        path: local file.
        trusted: allow arbitrary pickled objects (``weights_only=False``); only for files you
            trust. By default tensors, containers and ``argparse.Namespace`` (MAE's ``args``) load.
        parts: container keys to unwrap before the generic ones (``("teacher",)`` for OpenUS,
            whose file also holds the student, the optimizer and the loss centres).

    Returns:
        Flat ``{name: tensor}``.

    Raises:
        FileNotFoundError: no such file. CheckpointError: unreadable (truncated, not a checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (uslib never downloads weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        elif trusted:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure becomes one readable error
        hint = (
            "" if trusted else " (if it holds other pickled objects and you trust it: trusted=True)"
        )
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(err).__name__}: {err}{hint}"
        ) from err
    wrappers = (*parts, *_WRAPPERS)
    while isinstance(obj, dict) and any(isinstance(obj.get(k), dict) for k in wrappers):
        obj = next(obj[k] for k in wrappers if isinstance(obj.get(k), dict))
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    return obj


def _rename(key: str, kind: str) -> str | None:
    """The model key for a file key, or None when the key belongs to another part of the file."""
    for p in _PREFIXES[kind]:
        if key.startswith(p):
            key = key[len(p) :]
            break
    if kind in _ONLY and not key.startswith(_ONLY[kind]):
        return None
    for old, new in _RENAMES.get(kind, []):
        if isinstance(old, re.Pattern):
            key = old.sub(new, key, count=1)
        elif old.startswith(".") and old in key:
            key = key.replace(old, new, 1)
        elif key.startswith(old):
            key = new + key[len(old) :]
    return key


def _adapt(
    key: str, src: torch.Tensor, dst: torch.Tensor, model: nn.Module
) -> tuple[torch.Tensor, str]:
    """Return ``src`` reshaped to ``dst``'s shape and a note, or raise ValueError."""
    if key.endswith("mask_token") and src.numel() == dst.numel():
        return src.reshape(dst.shape), f"reshaped {tuple(src.shape)} to {tuple(dst.shape)}"
    if (
        key.endswith(("patch_embed.proj.weight", "conv1.weight", "stem.0.conv.weight"))
        and src.ndim == dst.ndim
        and (src.shape[:1] + src.shape[2:] == dst.shape[:1] + dst.shape[2:])
    ):
        if dst.shape[1] == 1:  # exact for grey images replicated to RGB, as every paper fed US
            return src.sum(dim=1, keepdim=True), f"summed {src.shape[1]} input channels to 1"
        if src.shape[1] == 1:
            return src.repeat_interleave(dst.shape[1], 1) / dst.shape[1], "spread 1 channel"
    if key.endswith("pos_embed") and src.ndim == 3 and hasattr(model, "patch_embed"):
        embed: Any = model.patch_embed
        grid = tuple(embed.grid_size)
        prefix = dst.shape[1] - grid[0] * grid[1]  # class-token rows kept as they are
        return resample_pos_embed(src, grid, num_prefix_tokens=prefix), f"resampled to {grid}"
    if key.endswith("pos_embed") and src.ndim == 5:
        return resample_pos_embed_3d(src, dst.shape[2:]), f"resampled to {tuple(dst.shape[2:])}"
    if key.endswith("relative_position_bias_table"):
        attn: Any = model.get_submodule(key.rsplit(".", 1)[0])
        window = attn.window_size
        with warnings.catch_warnings():  # timm's interpolation warns about torch internals
            warnings.simplefilter("ignore", UserWarning)
            table = resize_rel_pos_bias_table(src, tuple(window), tuple(dst.shape))
        return table, f"resized to {window}"
    raise ValueError(f"{key}: file {tuple(src.shape)} vs model {tuple(dst.shape)}")


def _first(items: list[str], n: int) -> str:
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_official(
    model: nn.Module,
    path: str | Path,
    kind: str,
    *,
    strict: bool = True,
    trusted: bool = False,
    max_list: int = 10,
) -> LoadReport:
    """Load an official checkpoint file onto ``model`` (see the module docstring for layouts).

    Args:
        model: the uslib module (``create_backbone(...)`` or ``MAEDecoder``).
        path: local checkpoint file.
        kind: one of ``KINDS``.
        strict: raise on missing/unexpected keys (shape mismatches always raise).
        trusted: see ``read_state_dict``.
        max_list: how many keys each error list shows.

    Returns:
        A ``LoadReport``.

    Raises:
        FileNotFoundError, CheckpointError (unreadable file, wrong architecture, key mismatch).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose from {KINDS}")
    state = read_state_dict(path, trusted=trusted, parts=_PARTS.get(kind, ()))
    report = LoadReport(path=str(path), kind=kind)
    target = model.state_dict()
    tops = {k.split(".", 1)[0] for k in target}
    mapped: dict[str, torch.Tensor] = {}
    mismatched: dict[str, str] = {}  # model key -> why it does not fit
    for raw, value in state.items():
        key = _rename(raw, kind)
        if key is None or any(d in key for d in _DROP) or key.split(".", 1)[0] not in tops:
            report.ignored.append(raw)
        elif key not in target:
            report.unexpected.append(raw)
        elif value.shape != target[key].shape:
            try:
                fitted, how = _adapt(key, value, target[key], model)
                if fitted.shape != target[key].shape:  # e.g. a table of another width
                    raise ValueError(
                        f"{key}: file {tuple(value.shape)} vs model {tuple(target[key].shape)}"
                    )
                mapped[key], report.adapted[key] = fitted, how
            except (ValueError, RuntimeError, AssertionError) as err:
                mismatched[key] = str(err)
        else:
            mapped[key] = value
    report.missing = sorted(set(target) - set(mapped) - set(mismatched))
    problems = []
    if mismatched:
        problems.append(f"shape mismatches: {_first(list(mismatched.values()), max_list)}")
    if strict and report.missing:
        problems.append(f"missing keys: {_first(report.missing, max_list)}")
    if strict and report.unexpected:
        problems.append(f"unexpected keys: {_first(report.unexpected, max_list)}")
    if problems:
        raise CheckpointError(
            f"{path} ({kind}) does not fit {type(model).__name__}: " + "; ".join(problems)
        )
    model.load_state_dict(mapped, strict=strict)
    report.loaded = sorted(mapped)
    return report
