"""Items, the JSON-able pointers to pixels, and the generic folder layouts that list them.

An **item** is a small JSON-able dict that says where the pixels are, never the pixels themselves
(the manifest stores items): ``path``, ``kind`` (image | video | dicom), ``mask_paths`` (a list,
merged by logical OR), ``label``, ``label_name``, ``dataset``, ``organ``, ``patient_id``,
``video_id``, ``frame_idx`` (frame of a clip, -1 for a still), ``spacing`` (mm/px) and
``meta``. Optional keys added by the manifest: ``roi`` (fan box) and ``cache_path`` (resized
image cache).

Generic layouts: class folders (``<root>/<class>/*.png``); image + mask pairs (BUSI's ``<class>/
<class> (n).png`` + ``<class> (n)_mask.png`` [+ ``_mask_1`` ...], or ``images/`` + ``masks/``);
folders of clips or DICOM files. Dataset-specific layouts (POCUS, HC18) are in
:mod:`uslib.data.sources`. Stills without a patient id get their own ``video_id`` (a still is a
one-frame clip), so grouped splits never lump them together.

Listing follows the shared rules (:mod:`uslib.data.validation`): every file a layout does not
list (a GIF among stills, a dangling link, a link loop, another extension) is logged on the
``uslib.data`` logger with the reason; an empty class folder is a warning naming it (its label
is kept, so labels stay those of ``classes``); a root where the layout finds nothing is a
:class:`~uslib.data.validation.LayoutError` naming the layouts looked for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uslib.data.media import DICOM_EXTS, IMAGE_EXTS, VIDEO_EXTS, media_kind
from uslib.data.schema import UNLABELLED
from uslib.data.validation import LayoutError, list_files, logger, notify

_MASK_RE = re.compile(r"^(?P<stem>.+?)_mask(?:_\d+)?$", re.IGNORECASE)


def is_mask_file(path: str | Path) -> bool:
    """Whether an image file is a mask, by the one rule every layout uses: its stem is
    ``<stem>_mask`` or ``<stem>_mask_<n>`` (BUSI, any case), or it lies in a ``masks/`` folder
    (the ``images/`` + ``masks/`` layout, HC18)."""
    p = Path(path)
    return bool(_MASK_RE.match(p.stem)) or p.parent.name.lower() == "masks"


LAYOUTS: dict[str, str] = {
    "class folders": "<root>/<class>/**/*.png (class_folder_items)",
    "image + mask pairs": "<root>/images/ + <root>/masks/, or BUSI-style <root>/<class>/<name>.png "
    "+ <name>_mask.png (paired_items)",
    "clips or DICOM files": "<root>/**/*.mp4|.avi|.gif|.dcm ... (media_file_items)",
}
"""The generic layouts (name -> what is looked for), listed by every layout error."""

# files a still-image layout skips that a user may have meant as items: warned, with the way in
_STILL_HINT = {
    **{e: "a clip, not a still image (list clips with media_file_items)" for e in VIDEO_EXTS},
    **{e: "a DICOM file (list with media_file_items(kinds=('dicom',)))" for e in DICOM_EXTS},
    ".gif": "a GIF is read as a clip, not a still image (list it with media_file_items)",
}
_MEDIA_HINT = {e: "a still image (list with class_folder_items/paired_items)" for e in IMAGE_EXTS}


def make_item(path: str | Path, *, dataset: str, **fields: Any) -> dict[str, Any]:
    """Build an item with defaults for every missing field (kind is guessed from the path)."""
    item: dict[str, Any] = {
        "path": str(path),
        "kind": media_kind(path),
        "mask_paths": [],
        "label": UNLABELLED,
        "label_name": "",
        "dataset": dataset,
        "organ": "",
        "patient_id": "",
        "video_id": "",
        "frame_idx": -1,
        "spacing": 0.0,
        "meta": {},
    }
    unknown = set(fields) - set(item) - {"roi", "cache_path"}
    if unknown:
        raise ValueError(f"make_item: unknown fields {sorted(unknown)}")
    item.update(fields)
    item["mask_paths"] = [str(p) for p in item["mask_paths"]]
    return item


def _no_layout(root: Path, what: str) -> LayoutError:
    looked = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
    return LayoutError(f"{root}: {what}. Layouts looked for: {looked}")


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")


def _class_dirs(root: Path, classes: Sequence[str] | None) -> list[str]:
    names, loose = [], []
    for d in sorted(root.iterdir()):
        if d.name.startswith("."):
            continue
        (names if d.is_dir() else loose).append(d.name)
    for name in loose:  # a file at the top level has no class
        logger.info("skipped %s: not in a class folder", root / name)
    if not names:
        raise _no_layout(root, f"no class folders ({len(loose)} files at the top level)")
    if classes is None:
        return names
    missing = set(classes) - set(names)
    if missing:
        raise FileNotFoundError(f"{root}: class folders {sorted(missing)} not found; have {names}")
    return list(classes)


def _mask_index(files: Sequence[Path]) -> dict[str, list[Path]]:
    """``"<folder>/<image stem>"`` -> its mask files (``<stem>_mask``, ``<stem>_mask_1``, ...)."""
    out: dict[str, list[Path]] = {}
    for m in files:
        hit = _MASK_RE.match(m.stem)
        if hit:
            out.setdefault(str(m.parent / hit.group("stem")), []).append(m)
    return out


def class_folder_items(
    root: str | Path,
    dataset: str | None = None,
    organ: str = "",
    classes: Sequence[str] | None = None,
    with_masks: bool = False,
) -> list[dict[str, Any]]:
    """Items of a ``<root>/<class>/**/*.png`` tree; mask files (``*_mask*``) are not items.

    Args:
        root: folder with one sub-folder per class.
        dataset: dataset name (default: the folder name).
        organ: organ of every item.
        classes: class folder names in label order (default: sorted folder names).
        with_masks: attach each image's ``<stem>_mask*`` files from its folder (BUSI layout).

    Returns:
        One item per image; ``label`` = index in ``classes``.
    """
    root = Path(root)
    _check_root(root)
    dataset = dataset or root.name
    items, empty = [], []
    for label, name in enumerate(_class_dirs(root, classes)):
        files = list_files(root / name, IMAGE_EXTS, hint=_STILL_HINT)
        masks = _mask_index(files) if with_masks else {}
        n_before = len(items)
        for p in files:
            if _MASK_RE.match(p.stem):
                continue
            vid = f"{dataset}:{p.relative_to(root).with_suffix('').as_posix()}"
            mp = masks.get(str(p.with_suffix("")), [])
            items.append(make_item(p, dataset=dataset, label=label, label_name=name, organ=organ,
                                   video_id=vid, mask_paths=mp))  # fmt: skip
        if len(items) == n_before:
            empty.append(f"{name} (label {label})")
    if not items:
        raise _no_layout(root, "no images in any class folder")
    if empty:
        notify("%s: class folders with no images: %s; their labels are kept with 0 items",
               root, ", ".join(empty))  # fmt: skip
    return items


def paired_items(
    root: str | Path,
    dataset: str | None = None,
    organ: str = "",
    classes: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Image + mask pairs: ``images/`` + ``masks/`` folders, or BUSI-style class folders.

    BUSI: ``<class>/<class> (n).png`` with ``<class> (n)_mask.png`` and optional extra
    ``_mask_1``, ``_mask_2`` files; all masks of an image are merged by logical OR at load time.
    ``images/`` + ``masks/``: a mask matches an image by stem, optionally with a ``_mask`` /
    ``_Mask`` suffix. Images without a mask file are kept with ``mask_paths=[]``.

    Returns:
        One item per image (labels from class folders; ``UNLABELLED`` for ``images/``).
    """
    root = Path(root)
    _check_root(root)
    dataset = dataset or root.name
    if not ((root / "images").is_dir() and (root / "masks").is_dir()):
        return class_folder_items(root, dataset, organ, classes, with_masks=True)
    masks: dict[str, list[Path]] = {}
    for m in list_files(root / "masks", IMAGE_EXTS, hint=_STILL_HINT):
        hit = _MASK_RE.match(m.stem)
        masks.setdefault(hit.group("stem") if hit else m.stem, []).append(m)
    images = list_files(root / "images", IMAGE_EXTS, hint=_STILL_HINT)
    if not images:
        raise _no_layout(root, "images/ holds no images")
    for stem in sorted(set(masks) - {p.stem for p in images}):
        logger.warning("skipped %s: mask without an image", masks[stem][0])
    return [
        make_item(
            p,
            dataset=dataset,
            organ=organ,
            mask_paths=masks.get(p.stem, []),
            video_id=f"{dataset}:{p.stem}",
        )  # fmt: skip
        for p in images
    ]


def media_file_items(
    root: str | Path, dataset: str | None = None, organ: str = "", kinds: Sequence[str] = ("video",)
) -> list[dict[str, Any]]:
    """One item per clip or DICOM file found under ``root`` (recursive).

    Args:
        kinds: ``"video"`` and/or ``"dicom"``.

    Returns:
        Items with ``frame_idx = -1`` (frame 0 is shown when loaded as a record) and
        ``video_id`` = the relative path.
    """
    root = Path(root)
    _check_root(root)
    dataset = dataset or root.name
    exts = (VIDEO_EXTS if "video" in kinds else frozenset()) | (
        DICOM_EXTS if "dicom" in kinds else frozenset()
    )
    files = list_files(root, exts, hint=_MEDIA_HINT)
    if not files:
        raise _no_layout(root, f"no {' or '.join(kinds)} files")
    return [
        make_item(
            p, dataset=dataset, organ=organ, video_id=f"{dataset}:{p.relative_to(root).as_posix()}"
        )
        for p in files
    ]
