"""The one record schema shared by every data source (ARCHITECTURE.md, 'Data flow').

A record is a plain dict so that torch's ``default_collate`` batches it. Missing values use
sentinels rather than ``None`` (which cannot be collated):

================  =====================================  ===========================
key               type                                   missing value
================  =====================================  ===========================
``image``         float32 tensor (C, H, W) in [0, 1]     (required)
``mask``          int64 tensor (H, W), 0 = background    all-zero, ``has_mask`` False
``has_mask``      bool                                   False
``label``         int                                    ``UNLABELLED`` (-1)
``dataset``       str                                    (required)
``organ``         str                                    ""
``patient_id``    str                                    ""  (falls back to video_id)
``video_id``      str                                    ""
``frame_idx``     int                                    -1
``spacing``       float, mm per pixel                    0.0 (unknown)
``meta``          dict of JSON-able extras               {}
================  =====================================  ===========================
"""

from __future__ import annotations

from typing import Any

from uslib.labels import UNLABELLED as UNLABELLED  # re-exported: records use it

RECORD_KEYS: tuple[str, ...] = (
    "image",
    "mask",
    "has_mask",
    "label",
    "dataset",
    "organ",
    "patient_id",
    "video_id",
    "frame_idx",
    "spacing",
    "meta",
)


def group_of(record: dict[str, Any]) -> str:
    """The split-grouping key of a record: its patient id if known, else its video id.

    Raises:
        ValueError: the record has neither, so no leakage-free split can place it (a loader
            must give every still its own ``video_id`` or a ``patient_id``).
    """
    group = record.get("patient_id") or record.get("video_id")
    if not group:
        raise ValueError(
            f"record of dataset {record.get('dataset', '?')!r} (frame {record.get('frame_idx')}) "
            "has no patient_id or video_id: it cannot be placed in a grouped split"
        )
    return str(group)
