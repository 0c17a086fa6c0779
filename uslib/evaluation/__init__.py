"""The evaluation harness: one set of protocols for every pretrained encoder.

Start here: ``evaluate(encoder, task, protocol, **options)`` runs one protocol of the registry
(``list_protocols()``: linear probe, kNN, partial fine-tuning, USCL's POCUS protocol, supervised
from scratch, frozen-encoder segmentation) and returns its long results table.

* ``protocols``: the registry, ``evaluate`` and the per-(encoder, task) protocols;
* ``heads``: the one head trainer (``HeadModel`` + ``fit_head`` on ``engine.fit`` + ``KeepBest``)
  and the one best-epoch rule; ``probes`` (linear probe, kNN), ``finetune`` (linear / partial /
  full) and ``segmentation`` (decoder on a frozen or fine-tuned encoder) build on it;
* ``pocus``: USCL's POCUS protocol (§B.8, D-8), shared by notebooks 02 and 07;
* ``features``: frozen-feature extraction, cached per checkpoint and split;
* ``seg_metrics``: Dice, IoU, HD95 with named empty-mask conventions, head circumference;
* ``stats``: grouped hold-out, mean +- std, bootstrap CIs, nested label-efficiency subsets
  (grouped k-fold is ``uslib.data.splits.grouped_kfold``);
* ``metrics``: classification metrics with the papers' averaging conventions;
* ``published``: the papers' numbers as data; ``report``: tables beside them;
* ``discovery``: pretrained checkpoints of a profile's run folders; ``tasks``: notebook 07's
  tasks; ``benchmark``: every encoder x task x protocol in one call (``run_benchmark``);
  ``cost``: params, GFLOPs, images/s.
"""

from uslib.evaluation.benchmark import BenchmarkConfig, BenchmarkResult, run_benchmark
from uslib.evaluation.discovery import EncoderEntry, discover_checkpoints
from uslib.evaluation.features import Features, extract_features
from uslib.evaluation.finetune import FinetuneResult, finetune_classifier
from uslib.evaluation.metrics import classification_metrics
from uslib.evaluation.probes import ProbeResult, knn_classify, linear_probe
from uslib.evaluation.protocols import PROTOCOLS, Evaluation, evaluate, list_protocols
from uslib.evaluation.published import published_numbers
from uslib.evaluation.seg_metrics import dice_iou, hd95, head_circumference
from uslib.evaluation.segmentation import SegResult, train_segmentation
from uslib.evaluation.stats import LABEL_FRACTIONS, bootstrap_ci, label_fraction_subsets, mean_std

__all__ = [
    "LABEL_FRACTIONS",
    "PROTOCOLS",
    "BenchmarkConfig",
    "BenchmarkResult",
    "EncoderEntry",
    "Evaluation",
    "Features",
    "FinetuneResult",
    "ProbeResult",
    "SegResult",
    "bootstrap_ci",
    "classification_metrics",
    "dice_iou",
    "discover_checkpoints",
    "evaluate",
    "extract_features",
    "finetune_classifier",
    "hd95",
    "head_circumference",
    "knn_classify",
    "label_fraction_subsets",
    "linear_probe",
    "list_protocols",
    "mean_std",
    "published_numbers",
    "run_benchmark",
    "train_segmentation",
]
