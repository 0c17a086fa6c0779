"""Decoding of ultrasound media (still images, video clips, DICOM) into grey arrays.

Still images go through Pillow, video clips through PyAV (imageio's pyav backend, called
directly; imageio's Pillow plugin is the GIF fallback), DICOM files (single- and multi-frame)
through pydicom.

Conventions shared by every reader:

* Output is grey. Colour inputs are converted with ITU-R BT.601 weights (Pillow's ``"L"``); an alpha
  channel is composited over black (the ultrasound background); palette images go through RGBA.
* 8-bit data is divided by 255. Data with more than 8 bits (16-bit PNG/TIFF, 32-bit integer or float
  images, DICOM with rescale slope/intercept or > 8 stored bits) is min-max rescaled over its *real*
  range, never clipped to 8 bits and never divided by 65535 (a 12-bit scanner fills 1/16 of it).
* Every failure raises :class:`MediaError`, whose message names the file and whose ``reason`` is a
  short code (``"empty file"``, ``"not an image"``, ``"truncated"``, ...) for rejects tables.
* The shared rule set (:mod:`uslib.data.validation`, a :class:`Rules` argument) applies here:
  EXIF orientation is applied to images and masks alike, non-finite pixels are rejected (or
  repaired by ``Rules(nonfinite="repair")``), masks must be binary or declared label maps, and
  images over ``max_pixels`` are rejected from their header.

Resizing (``fit_geometry``, ``fit_image``) and fan detection (``detect_fan_roi``) live in
:mod:`uslib.data.geometry` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from uslib.data.geometry import detect_fan_roi, fit_geometry, fit_image
from uslib.data.validation import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_RULES,
    MediaError,
    Rules,
    check_finite,
    exif_upright,
    mask_foreground,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DICOM_EXTS",
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "MediaError",
    "Rules",
    "detect_fan_roi",
    "fit_geometry",
    "fit_image",
    "iter_video_frames",
    "media_kind",
    "pil_to_grey",
    "read_dicom",
    "read_image",
    "read_mask",
    "read_video",
    "read_video_frame",
    "video_info",
]

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mpeg", ".mpg", ".m4v", ".mkv", ".webm", ".gif"})
DICOM_EXTS = frozenset({".dcm", ".dicom"})


def media_kind(path: str | Path) -> str:
    """``"image"``, ``"video"`` or ``"dicom"`` from the extension (DICOM also by its preamble)."""
    ext = Path(path).suffix.lower()
    if ext in VIDEO_EXTS:
        return "video"
    if ext in DICOM_EXTS:
        return "dicom"
    if ext in IMAGE_EXTS:
        return "image"
    try:
        with open(path, "rb") as f:
            if f.read(132)[128:132] == b"DICM":
                return "dicom"
    except OSError:
        pass
    return "image"


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise MediaError(path, "missing file")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file")


def _minmax(arr: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1] over the real range; a constant image maps to zeros (arr is finite)."""
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def pil_to_grey(
    img: Image.Image, *, source: str | Path = "<image>", rules: Rules = DEFAULT_RULES
) -> np.ndarray:
    """Convert a decoded Pillow image of any mode to grey float32 in [0, 1].

    Args:
        img: a loaded image (modes 1, L, LA, P, PA, RGB, RGBA, CMYK, YCbCr, I;16*, I, F, ...).
        source: the file it came from, named in errors.
        rules: ``rules.nonfinite`` decides what NaN/Inf pixels of float images do.

    Returns:
        Array of shape (H, W), float32 in [0, 1]; high-bit-depth modes are min-max rescaled.

    Raises:
        MediaError: non-finite pixels (``reason="non-finite pixels"``, unless repaired).
    """
    mode = img.mode
    if mode.startswith("I") or mode == "F":  # I;16, I;16B, I (32-bit), F: more than 8 bits
        # checked before the rescale: one NaN would make every pixel NaN
        return _minmax(check_finite(np.asarray(img), source, rules))
    if mode in ("P", "PA"):
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        alpha = np.asarray(img.getchannel("A"), np.float32) / 255.0
        grey = np.asarray(img.convert("RGB").convert("L"), np.float32) / 255.0
        return grey * alpha  # composite over black
    if mode != "L":
        img = img.convert("RGB").convert("L") if mode != "1" else img.convert("L")
    return np.asarray(img, np.float32) / 255.0


def read_image(
    path: str | Path, max_pixels: int | None = None, rules: Rules = DEFAULT_RULES
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a still image file to grey, upright (EXIF orientation applied).

    Args:
        path: image file (PNG, JPEG, TIFF, BMP, ...).
        max_pixels: larger images raise ``MediaError(reason="too large")`` before decoding
            (default ``rules.max_pixels``).
        rules: the shared rule set (non-finite pixels; see :mod:`uslib.data.validation`).

    Returns:
        ``(image, info)``: image (H, W) float32 in [0, 1]; info has ``mode``, ``height``,
        ``width`` (as displayed), ``n_frames``.

    Raises:
        MediaError: missing, empty, not an image, too large, truncated, corrupt or non-finite.
    """
    path = Path(path)
    _check_file(path)
    limit = rules.max_pixels if max_pixels is None else max_pixels
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > limit:  # from the header, before any pixel is decoded
                raise MediaError(path, "too large", f"{w}x{h} > {limit} pixels")
            img.load()
            up = exif_upright(img)
            info = {"mode": up.mode, "height": up.height, "width": up.width, "n_frames": 1}
            return pil_to_grey(up, source=path, rules=rules), info
    except UnidentifiedImageError as e:
        raise MediaError(path, "not an image") from e
    except Image.DecompressionBombError as e:
        raise MediaError(path, "too large", str(e)) from e
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, MediaError):
            raise
        raise MediaError(path, "truncated", str(e)) from e


def _mask_pixels(path: Path) -> np.ndarray:
    """Raw mask values: palette indices for P, grey for colour, raw integers for 16/32-bit."""
    _check_file(path)
    try:
        with Image.open(path) as img:
            img.load()
            img = exif_upright(img)
            if img.mode in ("L", "P", "I", "I;16", "1"):
                arr = np.asarray(img)
            else:
                arr = np.asarray(img.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(path, "unreadable mask", str(e)) from e
    return arr.astype(np.uint8) if arr.dtype == bool else arr


def read_mask(
    paths: list[str] | tuple[str, ...],
    shape: tuple[int, int] | None = None,
    rules: Rules = DEFAULT_RULES,
) -> np.ndarray:
    """Read one or more mask files, upright (EXIF), and merge them (BUSI's ``_mask_1`` files).

    Values follow the shared rules (:func:`uslib.data.validation.mask_foreground`): binary masks
    (0/1 or 0/255) give 0/1 and are merged by logical OR; label maps need their values declared
    (``Rules(mask_values=...)``) and are merged by maximum; any other mask is rejected unless
    ``Rules(mask_threshold=...)`` thresholds it (with a logged count).

    Args:
        paths: mask files; an empty list gives an all-zero mask (``shape`` required).
        shape: expected (H, W); a mask of another size raises ``MediaError``.
        rules: the shared rule set.

    Returns:
        int64 array (H, W): {0, 1}, or the declared label values.

    Raises:
        MediaError: unreadable mask, mask values, mask size differs (each names the mask file).
    """
    if not paths:
        if shape is None:
            raise ValueError("read_mask: no mask paths and no shape")
        return np.zeros(shape, np.int64)
    out: np.ndarray | None = None
    for p in paths:
        fg = mask_foreground(_mask_pixels(Path(p)), p, rules)
        want = shape if shape is not None else (out.shape if out is not None else fg.shape)
        if fg.shape != tuple(want):
            raise MediaError(p, "mask size differs", f"{fg.shape} vs image {tuple(want)}")
        out = fg if out is None else np.maximum(out, fg)  # = logical OR for 0/1 masks
    assert out is not None
    return out


def _pyav_frames(path: Path) -> Iterator[np.ndarray]:
    # PyAV directly: imageio's pyav plugin wraps the same decoder but runs gc.collect() twice
    # on every close (0.05-0.5 s per clip in a process holding torch).
    import av

    with av.open(str(path)) as container:  # closed even when iteration stops early
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="gray")


def _pillow_frames(path: Path) -> Iterator[np.ndarray]:
    import imageio.v3 as iio

    with iio.imopen(path, "r", plugin="pillow") as f:
        yield from f.iter(mode="L")


def iter_video_frames(path: str | Path, stop: int | None = None) -> Iterator[np.ndarray]:
    """Yield grey uint8 frames (H, W) of a clip in decode order, up to index ``stop`` (exclusive).

    Decoding is sequential on purpose: seeking by index in MPEG program streams lands on other
    frames, while sequential indices match the POCUS frames extracted with OpenCV. PyAV decodes
    mp4/avi/mov/mpeg/gif (every POCUS clip); GIFs fall back to imageio's Pillow plugin.
    """
    path = Path(path)
    _check_file(path)
    readers = [_pyav_frames]
    if path.suffix.lower() == ".gif":
        readers.append(_pillow_frames)
    last: Exception | None = None
    for reader in readers:
        n = 0
        try:
            for frame in reader(path):
                if stop is not None and n >= stop:
                    return
                yield np.asarray(frame, np.uint8)
                n += 1
            return
        except Exception as e:  # decoder errors come as many types (av.error.*, OSError)
            if n:  # frames were already yielded: do not restart with another reader
                raise MediaError(path, "truncated video", f"after {n} frames: {e!r}") from e
            last = e
    raise MediaError(path, "undecodable video", repr(last))


def read_video(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """Decode a clip to grey frames.

    Args:
        path: video file (mp4, avi, mov, mpeg, gif, ...).
        max_frames: keep only the first ``max_frames`` frames.

    Returns:
        uint8 array (T, H, W).
    """
    frames = list(iter_video_frames(path, stop=max_frames))
    if not frames:
        raise MediaError(path, "empty video")
    return np.stack(frames)


def read_video_frame(path: str | Path, index: int) -> np.ndarray:
    """Decode frame ``index`` (0-based, decode order) of a clip: uint8 (H, W)."""
    frames = list(iter_video_frames(path, stop=index + 1))
    if index < 0 or len(frames) <= index:
        raise MediaError(path, "frame out of range", f"index {index}, {len(frames)} frames")
    return frames[index]


def video_info(path: str | Path) -> dict[str, Any]:
    """Frame count, fps and size of a clip without decoding it (packets are counted when the
    container has no frame count, as MPEG program streams do).

    Returns:
        ``{"n_frames", "fps", "height", "width", "codec"}``.
    """
    import av

    path = Path(path)
    _check_file(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            n = int(stream.frames)
            if n <= 0:
                n = sum(1 for pk in container.demux(stream) if pk.size > 0)
            rate = stream.average_rate or stream.guessed_rate
            return {
                "n_frames": n,
                "fps": float(rate) if rate else 0.0,
                "height": int(stream.codec_context.height),
                "width": int(stream.codec_context.width),
                "codec": stream.codec_context.name,
            }
    except Exception as e:
        raise MediaError(path, "undecodable video", repr(e)) from e


def _dicom_spacing(ds: Any) -> float:
    """mm per pixel: PixelSpacing (mm), else the first ultrasound region's PhysicalDeltaX (cm)."""
    if "PixelSpacing" in ds:
        return float(ds.PixelSpacing[1])
    for region in ds.get("SequenceOfUltrasoundRegions", []):
        if int(region.get("PhysicalUnitsXDirection", 0)) == 3:  # 3 = cm
            return float(region.PhysicalDeltaX) * 10.0
    return 0.0


def read_dicom(path: str | Path, rules: Rules = DEFAULT_RULES) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a DICOM file (single- or multi-frame, grey or colour) to grey frames.

    Rescale slope/intercept are applied, MONOCHROME1 is inverted, YBR is converted to RGB, and
    the whole clip is min-max rescaled over its real range unless it is plain 8-bit data.

    Args:
        path: DICOM file.
        rules: the shared rule set (non-finite pixels after the rescale are rejected or repaired).

    Returns:
        ``(frames, info)``: float32 (T, H, W) in [0, 1] (T = 1 for a single frame); info has
        ``n_frames``, ``height``, ``width``, ``spacing`` (mm/px, 0.0 unknown), ``photometric``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    _check_file(path)
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except InvalidDicomError as e:
        raise MediaError(path, "not a DICOM file") from e
    except Exception as e:
        raise MediaError(path, "undecodable DICOM", repr(e)) from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    plain8 = arr.dtype == np.uint8 and slope == 1 and intercept == 0
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        arr = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    arr = arr.reshape((n_frames, *arr.shape[-2:])) if n_frames > 1 else arr[None]
    out = arr / 255.0 if plain8 else _minmax(check_finite(arr * slope + intercept, path, rules))
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    info = {
        "n_frames": int(out.shape[0]),
        "height": int(out.shape[1]),
        "width": int(out.shape[2]),
        "spacing": _dicom_spacing(ds),
        "photometric": photometric,
    }
    return out.astype(np.float32), info
