"""Near-duplicate detection with a DCT perceptual hash, and train/test contamination checks.

pHash (Zauner, "Implementation and benchmarking of perceptual image hash functions", 2010): shrink
the image to 32x32 (area average), take the 2-D DCT-II, keep the 8x8 lowest frequencies and set
one bit per coefficient that is above the median of the 63 non-DC coefficients. Resizing,
re-encoding and mild contrast changes move few bits; different images differ in about half of the
64 bits. Two images are near-duplicates when the Hamming distance of their hashes is at most
``max_distance`` (default 6 of 64 bits: re-encoded, resized copies land at 0-2, while two
unrelated sector scans can come within 8 bits from the shape of the fan alone).

Why it matters here: frames of one clip and images of one subject are near-duplicates
(``hc18_subset``: ``010_HC`` and ``010_2HC``), so splits must be grouped; and OpenUS's pretraining
corpus contains its own evaluation sets (openus_tinyusfm.md §1.4, §1.8.10), which
:func:`contamination` detects between two manifests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy.fft import dctn

DEFAULT_MAX_DISTANCE = 6


def phash(img: np.ndarray, hash_size: int = 8, highfreq_factor: int = 4) -> int:
    """DCT perceptual hash of a grey image.

    Args:
        img: (H, W) grey image (any real dtype and range; only the ordering of DCT coefficients
            matters, so a global gain or offset does not change the hash).
        hash_size: side of the kept low-frequency block (8 -> 64-bit hash).
        highfreq_factor: the image is shrunk to ``hash_size * highfreq_factor`` pixels a side.

    Returns:
        The hash as a non-negative int of ``hash_size**2`` bits (bit k = coefficient k in row-major
        order of the low-frequency block, most significant first).
    """
    if img.ndim != 2:
        raise ValueError(f"phash: expected a 2-D grey image, got shape {img.shape}")
    n = hash_size * highfreq_factor
    small = Image.fromarray(np.asarray(img, np.float32)).resize((n, n), Image.Resampling.BOX)
    coeffs = dctn(np.asarray(small, np.float64), type=2, norm="ortho")
    low = coeffs[:hash_size, :hash_size].ravel()
    bits = low > np.median(low[1:])  # DC excluded from the median: it only tracks brightness
    return int("".join("1" if b else "0" for b in bits), 2)


def hash_to_hex(h: int, n_bits: int = 64) -> str:
    """Fixed-width hex string of a hash (manifests store hashes as text)."""
    return f"{h:0{n_bits // 4}x}"


def _as_uint64(hashes: Any) -> np.ndarray:
    """Hex strings or ints -> uint64 array (64-bit hashes only)."""
    vals = [int(h, 16) if isinstance(h, str) else int(h) for h in hashes]
    return np.array(vals, dtype=np.uint64)


def hamming_distances(a: Any, b: Any) -> np.ndarray:
    """Pairwise Hamming distances between two lists of 64-bit hashes (hex strings or ints).

    Returns:
        (len(a), len(b)) uint8 matrix.
    """
    ua, ub = _as_uint64(a), _as_uint64(b)
    return np.bitwise_count(ua[:, None] ^ ub[None, :]).astype(np.uint8)


def _close_pairs(
    ha: np.ndarray, hb: np.ndarray, max_distance: int, same: bool, chunk: int = 1024
) -> Iterator[tuple[int, int, int]]:
    """Yield (i, j, d) with d <= max_distance, block by block (memory O(chunk * len(hb)))."""
    for start in range(0, len(ha), chunk):
        d = np.bitwise_count(ha[start : start + chunk, None] ^ hb[None, :])
        ii, jj = np.nonzero(d <= max_distance)
        for i, j in zip(ii.tolist(), jj.tolist()):
            if not same or start + i < j:
                yield start + i, j, int(d[i, j])


def _relation(a: pd.Series, b: pd.Series) -> str:
    if a["group"] == b["group"]:
        return "same group"
    return "same dataset" if a["dataset"] == b["dataset"] else "cross dataset"


def near_duplicates(
    df: pd.DataFrame,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    split_col: str | None = None,
) -> pd.DataFrame:
    """All pairs of near-duplicate rows of a manifest table, within and across datasets.

    Args:
        df: manifest rows with columns ``phash`` (hex), ``path``, ``dataset``, ``group``
            (``uslib.data.manifest.Manifest.to_pandas()`` gives them).
        max_distance: largest Hamming distance (bits of 64) counted as a near-duplicate.
        split_col: optional column with each row's split (fold or train/val/test); adds
            ``split_a``, ``split_b`` and ``crosses_split``, the pairs that leak across a split.

    Returns:
        One row per pair (a < b): ``index_a``, ``index_b``, ``distance``, ``path_a``, ``path_b``,
        ``dataset_a``, ``dataset_b``, ``group_a``, ``group_b`` and ``relation`` (``same group``,
        ``same dataset`` or ``cross dataset``), sorted by distance.
    """
    df = df.reset_index(drop=True)
    hashes = _as_uint64(df["phash"])
    rows = []
    for i, j, d in _close_pairs(hashes, hashes, max_distance, same=True):
        a, b = df.iloc[i], df.iloc[j]
        row = {"index_a": i, "index_b": j, "distance": d, "relation": _relation(a, b)}
        for col in ("path", "dataset", "group") + ((split_col,) if split_col else ()):
            key = "split" if col == split_col else col
            row[f"{key}_a"], row[f"{key}_b"] = a[col], b[col]
        rows.append(row)
    cols = ["index_a", "index_b", "distance", "relation", "path_a", "path_b", "dataset_a",
            "dataset_b", "group_a", "group_b"]  # fmt: skip
    out = pd.DataFrame(rows, columns=cols + (["split_a", "split_b"] if split_col else []))
    if split_col:
        out["crosses_split"] = out["split_a"] != out["split_b"]
    return out.sort_values(["distance", "index_a", "index_b"], kind="stable").reset_index(drop=True)


def duplicate_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """Count near-duplicate pairs per (dataset_a, dataset_b, relation) for a report table."""
    if pairs.empty:
        return pd.DataFrame(columns=["dataset_a", "dataset_b", "relation", "n_pairs"])
    g = pairs.groupby(["dataset_a", "dataset_b", "relation"], sort=True)
    return g.size().rename("n_pairs").reset_index()


def contamination(
    pretrain: pd.DataFrame, evaluation: pd.DataFrame, max_distance: int = DEFAULT_MAX_DISTANCE
) -> pd.DataFrame:
    """Evaluation images that also occur (as near-duplicates) in a pretraining manifest.

    OpenUS pretrains on BUSI, BUS-BRA, TN3K and Fetal_Planes_DB and then evaluates on them
    (openus_tinyusfm.md §1.4); a self-supervised encoder that has seen the test images is not
    evaluated on unseen data. This flags each evaluation row with a pretraining row at Hamming
    distance <= ``max_distance`` (identical paths count as distance 0).

    Args:
        pretrain: pretraining manifest rows (``phash``, ``path``, ``dataset``).
        evaluation: evaluation manifest rows (same columns).
        max_distance: largest distance counted as the same image.

    Returns:
        One row per contaminated evaluation image: ``eval_index``, ``eval_path``, ``eval_dataset``,
        ``pretrain_path``, ``pretrain_dataset`` (the nearest match), ``distance``, ``n_matches``.
    """
    hp, he = _as_uint64(pretrain["phash"]), _as_uint64(evaluation["phash"])
    best: dict[int, tuple[int, int]] = {}
    count: dict[int, int] = {}
    for i, j, d in _close_pairs(he, hp, max_distance, same=False):
        count[i] = count.get(i, 0) + 1
        if i not in best or d < best[i][1]:
            best[i] = (j, d)
    rows = []
    for i, (j, d) in sorted(best.items()):
        e, p = evaluation.iloc[i], pretrain.iloc[j]
        rows.append({"eval_index": i, "eval_path": e["path"], "eval_dataset": e["dataset"],
                     "pretrain_path": p["path"], "pretrain_dataset": p["dataset"],
                     "distance": d, "n_matches": count[i]})  # fmt: skip
    cols = ["eval_index", "eval_path", "eval_dataset", "pretrain_path", "pretrain_dataset",
            "distance", "n_matches"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)
