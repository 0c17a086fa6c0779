"""The evaluation harness: one set of protocols for every pretrained encoder.

* ``features``: frozen-feature extraction, cached per checkpoint and split;
* ``probes``: linear probe (logistic regression or a trained linear layer) and cosine kNN;
* ``finetune``: classifier fine-tuning (linear / partial = USCL / full = TinyUSFM);
* ``segmentation`` + ``seg_metrics``: frozen or fine-tuned encoder + light decoder; Dice, IoU,
  HD95 with named empty-mask conventions; head circumference from an ellipse fit;
* ``stats``: grouped k-fold, mean +- std, bootstrap CIs, nested label-efficiency subsets;
* ``metrics``: classification metrics with the papers' averaging conventions;
* ``published``: the papers' numbers as data; ``report``: tables beside them;
* ``discovery``: pretrained checkpoints of a profile's run folders (+ input adapters);
* ``tasks``, ``protocols``, ``benchmark``: notebook 07's tasks, per-(encoder, task) protocols and
  the one-call orchestration ``run_benchmark``; ``cost``: params, GFLOPs, images/s;
  ``feature_maps``: cached frozen feature maps for cheap decoder training.
"""

from uslib.evaluation.benchmark import BenchmarkConfig, BenchmarkResult, run_benchmark
from uslib.evaluation.discovery import EncoderEntry, discover_checkpoints
from uslib.evaluation.features import Features, extract_features
from uslib.evaluation.finetune import FinetuneResult, finetune_classifier
from uslib.evaluation.metrics import classification_metrics
from uslib.evaluation.probes import ProbeResult, knn_classify, linear_probe
from uslib.evaluation.published import published_numbers
from uslib.evaluation.seg_metrics import dice_iou, hd95, head_circumference
from uslib.evaluation.segmentation import SegResult, train_segmentation
from uslib.evaluation.stats import (
    LABEL_FRACTIONS,
    bootstrap_ci,
    grouped_kfold,
    label_fraction_subsets,
    mean_std,
)

__all__ = [
    "LABEL_FRACTIONS",
    "BenchmarkConfig",
    "BenchmarkResult",
    "EncoderEntry",
    "discover_checkpoints",
    "run_benchmark",
    "Features",
    "FinetuneResult",
    "ProbeResult",
    "SegResult",
    "bootstrap_ci",
    "classification_metrics",
    "dice_iou",
    "extract_features",
    "finetune_classifier",
    "grouped_kfold",
    "hd95",
    "head_circumference",
    "knn_classify",
    "label_fraction_subsets",
    "linear_probe",
    "mean_std",
    "published_numbers",
    "train_segmentation",
]
