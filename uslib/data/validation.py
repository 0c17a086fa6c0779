"""The one validation rule set shared by every loading path (media readers, layouts, sources,
records, the manifest): bad input is a clear error naming the file, or a logged skip, never silent.

Rules (:class:`Rules`, one frozen object passed down every path):

* **Non-finite pixels** (NaN, +-Inf in float TIFFs or rescaled DICOM) are rejected with the file
  named (``reason="non-finite pixels"``); ``nonfinite="repair"`` replaces NaN and -Inf by the
  finite minimum and +Inf by the finite maximum, with a logged count.
* **EXIF orientation** is applied to images and masks alike (:func:`exif_upright`), so a mask drawn
  as the image displays fits it.
* **Masks** must be binary (values within {0, 1} or {0, 255}) or label maps whose values were
  declared (``mask_values``); any other mask is rejected (``reason="mask values"``) unless
  ``mask_threshold`` is set, which thresholds it and logs how many pixels were not binary.
* **Size**: images with a side under ``min_side`` are rejected (``"too small"``) on every path;
  images over ``max_pixels`` are rejected from their header (``"too large"``).
* **Skipped files and links** (GIFs in a still-image layout, dangling links, link loops, other
  extensions) are logged on the ``uslib.data`` logger with the reason; empty class folders are a
  warning naming them; a root with no recognised layout is a :class:`LayoutError` listing the
  layouts looked for.

Every event goes to ``logging.getLogger("uslib.data")``; those a user must act on (empty class
folders, skipped CSV rows, repaired pixels, thresholded masks) are also a ``UserWarning``.
"""

from __future__ import annotations

import errno
import logging
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_RULES",
    "MIN_SIDE",
    "LayoutError",
    "MediaError",
    "Rules",
    "check_finite",
    "check_size",
    "exif_upright",
    "list_files",
    "logger",
    "mask_foreground",
    "notify",
]

logger = logging.getLogger("uslib.data")

MIN_SIDE = 32
"""Images with a side shorter than this are rejected as ``"too small"``."""
DEFAULT_MAX_PIXELS = 64_000_000
"""Larger images are rejected as ``"too large"`` (a 8000x8000 scan; Pillow's bomb limit is 89 M)."""
_BINARY_SETS = (frozenset({0, 1}), frozenset({0, 255}))


class MediaError(ValueError):
    """A file that cannot be used: ``str(err)`` names the file, ``err.reason`` is a short code.

    Codes: ``"missing file"``, ``"empty file"``, ``"not an image"``, ``"truncated"``, ``"too
    small"``, ``"too large"``, ``"non-finite pixels"``, ``"mask values"``, ``"mask size
    differs"``, ``"unreadable mask"``, ... (the ``reason`` column of rejects tables).
    """

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


class LayoutError(ValueError):
    """A folder that holds no recognised layout (the message lists the layouts looked for)."""


@dataclass(frozen=True)
class Rules:
    """The validation rules applied on every loading path (defaults: strict).

    Attributes:
        min_side: reject images with a side shorter than this (px).
        max_pixels: reject images with more pixels than this, from the header.
        nonfinite: ``"reject"`` NaN/Inf pixels, or ``"repair"`` them (NaN, -Inf -> finite min;
            +Inf -> finite max), logged with a count.
        mask_values: declared label values of label-map masks (e.g. ``(0, 1, 2)``): masks then
            keep their values; ``None`` accepts binary masks only (0/1 or 0/255 -> 0/1).
        mask_threshold: threshold masks with undeclared values (foreground = value >
            ``mask_threshold``) instead of rejecting them; the count of non-binary pixels is logged.
    """

    min_side: int = MIN_SIDE
    max_pixels: int = DEFAULT_MAX_PIXELS
    nonfinite: str = "reject"
    mask_values: tuple[int, ...] | None = None
    mask_threshold: int | None = None

    def __post_init__(self) -> None:
        if self.nonfinite not in ("reject", "repair"):
            raise ValueError(f"Rules.nonfinite={self.nonfinite!r}; valid: 'reject', 'repair'")

    def but(self, **changes: Any) -> Rules:
        """A copy with some rules changed (``None`` values leave a rule as it is)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


DEFAULT_RULES = Rules()


def notify(message: str, *args: Any, stacklevel: int = 3) -> None:
    """Log ``message % args`` as a warning on ``uslib.data`` and raise it as a ``UserWarning``."""
    text = message % args if args else message
    logger.warning(text)
    warnings.warn(text, UserWarning, stacklevel=stacklevel)


def check_finite(arr: np.ndarray, path: str | Path, rules: Rules = DEFAULT_RULES) -> np.ndarray:
    """Reject (or, with ``rules.nonfinite == "repair"``, repair) NaN/Inf pixels.

    Args:
        arr: raw decoded pixels (any shape), before any rescaling.
        path: the file, named in the error.
        rules: the rule set.

    Returns:
        ``arr`` itself when it is finite (or integer), else a repaired float64 copy.

    Raises:
        MediaError: ``reason="non-finite pixels"`` (with the NaN/Inf counts).
    """
    if not np.issubdtype(arr.dtype, np.floating):
        return arr
    bad = ~np.isfinite(arr)
    n_bad = int(bad.sum())
    if not n_bad:
        return arr
    n_nan = int(np.isnan(arr).sum())
    detail = f"{n_nan} NaN, {n_bad - n_nan} Inf of {arr.size} pixels"
    if rules.nonfinite != "repair" or n_bad == arr.size:
        hint = "" if n_bad == arr.size else "; Rules(nonfinite='repair') replaces them"
        raise MediaError(path, "non-finite pixels", detail + hint)
    finite = arr[~bad]
    out = np.where(np.isposinf(arr), finite.max(), np.where(bad, finite.min(), arr))
    notify("%s: repaired non-finite pixels (%s)", path, detail)
    return out.astype(np.float64)


def check_size(height: int, width: int, path: str | Path, rules: Rules = DEFAULT_RULES) -> None:
    """Reject an image with a side under ``rules.min_side`` (``reason="too small"``)."""
    if min(height, width) < rules.min_side:
        raise MediaError(path, "too small", f"{width}x{height} < {rules.min_side} px")


def exif_upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (the image as it displays); a no-op without one."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        return img
    return ImageOps.exif_transpose(img) if orientation not in (1, None) else img


def _show_values(values: np.ndarray, n: int = 8) -> str:
    more = f" ... ({len(values)} values)" if len(values) > n else ""
    return "[" + ", ".join(str(int(v)) for v in values[:n]) + "]" + more


def mask_foreground(arr: np.ndarray, path: str | Path, rules: Rules = DEFAULT_RULES) -> np.ndarray:
    """Check a decoded mask's values against the rules and return it as int64.

    Args:
        arr: mask pixels (H, W) of any integer (or bool) dtype.
        path: the mask file, named in errors.
        rules: ``mask_values`` (declared label values) and ``mask_threshold``.

    Returns:
        int64 (H, W): 0/1 for binary masks (0/255 -> 0/1), the label values for a declared
        label map, or ``arr > mask_threshold`` for a thresholded one.

    Raises:
        MediaError: ``reason="mask values"`` naming the undeclared values.
    """
    values = np.unique(arr)
    vset = frozenset(int(v) for v in values)
    if rules.mask_values is not None and vset <= set(rules.mask_values) | {0}:
        return arr.astype(np.int64)
    if rules.mask_values is None and any(vset <= s for s in _BINARY_SETS):
        return (arr > 0).astype(np.int64)
    allowed = (
        f"declared {sorted(rules.mask_values)}"
        if rules.mask_values is not None
        else "binary: 0/1 or 0/255"
    )
    if rules.mask_threshold is None:
        raise MediaError(
            path,
            "mask values",
            f"values {_show_values(values)} are not {allowed}; declare label values "
            "(Rules(mask_values=...)) or threshold (Rules(mask_threshold=127))",
        )
    top = int(values.max())
    n_odd = int((~np.isin(arr, [0, top])).sum())
    notify("%s: thresholded mask at > %d (%d pixels were neither 0 nor %d; values %s)",
           path, rules.mask_threshold, n_odd, top, _show_values(values))  # fmt: skip
    return (arr > rules.mask_threshold).astype(np.int64)


def _link_problem(path: Path) -> str | None:
    """``"dangling link"`` / ``"link loop"`` for a broken symlink, else None."""
    try:
        os.stat(path)
    except OSError as e:
        return "link loop" if e.errno == errno.ELOOP else "dangling link"
    return None


def _above(link: str, top: str) -> bool:
    """Whether a folder link resolves to ``top`` (the walk's real root) or a folder above it."""
    real = os.path.realpath(link)
    return top == real or top.startswith(real.rstrip(os.sep) + os.sep)


def _entry_skip(entry: os.DirEntry[str], exts: frozenset[str], hint: dict[str, str]) -> str | None:
    """Why a directory entry that is not a folder is not listed, or None to list it."""
    if not entry.is_file():
        return "not a regular file"
    ext = Path(entry.name).suffix.lower()
    if ext in exts:
        return None
    return hint.get(ext, f"extension {ext or '(none)'} is not one of {sorted(exts)}")


def list_files(
    folder: str | Path,
    exts: frozenset[str],
    hint: dict[str, str] | None = None,
    quiet_exts: frozenset[str] = frozenset(),
) -> list[Path]:
    """Files under ``folder`` (recursive, links followed) whose extension is in ``exts``.

    Everything else is logged on ``uslib.data`` with the reason: broken links (dangling, loops)
    and files named in ``hint`` (e.g. GIFs in a still-image layout) as warnings, other extensions
    as info, hidden entries (``.name``) at debug. Linked folders are followed once: a link to a
    folder already listed (a loop, or a second way to the same files) is a logged skip.

    Args:
        folder: root of the walk.
        exts: extensions to list (lower case, with the dot).
        hint: extension -> reason for files a user may expect to be listed (warnings).
        quiet_exts: extensions skipped at debug level (e.g. index files of the layout).

    Returns:
        Sorted paths.
    """
    hint = hint or {}
    out: list[Path] = []
    seen: set[str] = set()
    top = os.path.realpath(folder)
    stack = [Path(folder)]
    while stack:
        d = stack.pop()
        real = os.path.realpath(d)
        if real in seen:
            logger.warning("skipped %s: link to a folder already listed (loop or duplicate)", d)
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            logger.warning("skipped %s: unreadable folder (%s)", d, e.strerror)
            continue
        subdirs = []
        for entry in entries:
            broken = _link_problem(Path(entry.path)) if entry.is_symlink() else None
            if entry.name.startswith("."):
                logger.debug("skipped %s: hidden", entry.path)
            elif broken:
                logger.warning("skipped %s: %s", entry.path, broken)
            elif entry.is_dir() and entry.is_symlink() and _above(entry.path, top):
                logger.warning("skipped %s: link loop (to a folder at or above %s)", entry.path,
                               folder)  # fmt: skip
            elif entry.is_dir():
                subdirs.append(Path(entry.path))
            elif (why := _entry_skip(entry, exts, hint)) is None:
                out.append(Path(entry.path))
            else:
                quiet = Path(entry.name).suffix.lower() in quiet_exts
                level = logging.DEBUG if quiet else logging.INFO
                if Path(entry.name).suffix.lower() in hint:
                    level = logging.WARNING
                logger.log(level, "skipped %s: %s", entry.path, why)
        stack.extend(reversed(subdirs))
    return sorted(out)
