"""Read any supported image file into a grayscale array. The one place for file-format rules.

PNG/JPEG/TIFF/BMP (8 or 16 bit; gray, RGB or with alpha) come through OpenCV; DICOM through
pydicom (modality LUT / rescale, VOI LUT or window, MONOCHROME1 inverted). Every reader returns
``(array, max_value)``: a 2-D array and the largest value its bit depth allows, so that
``preprocess`` can map any depth to [0, 1] the same way for training and inference.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
SUPPORTED_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES


class UnreadableImageError(ValueError):
    """A file that is not a readable radiograph; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _to_gray(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[2] == 4:  # drop alpha; OpenCV gives BGRA
        arr = arr[:, :, :3]
    if arr.ndim == 3 and arr.shape[2] == 3:
        # radiographs stored as RGB have equal channels; a weighted sum is exact for those
        return cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return arr[:, :, 0]
    raise ValueError(f"unexpected image shape {arr.shape}")


def read_bitmap(path: str | Path, data: bytes | None = None) -> tuple[np.ndarray, float]:
    """PNG/JPEG/TIFF/BMP from ``path``, or from ``data`` (its bytes; ``path`` then only names it)."""
    data = np.fromfile(str(path), dtype=np.uint8) if data is None else np.frombuffer(data, np.uint8)
    if data.size == 0:
        raise UnreadableImageError(path, "empty file")
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise UnreadableImageError(
            path, "not a decodable image (corrupt, truncated or not an image)"
        )
    arr = _to_gray(arr)
    if arr.dtype == np.uint8:
        return arr, 255.0
    if arr.dtype == np.uint16:
        return arr, 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32), float(max(1.0, np.nanmax(arr)))
    raise UnreadableImageError(path, f"unsupported pixel type {arr.dtype}")


DICOM_SCALES = ("full_range", "minmax")
# decoders faster than pydicom's default choice for a transfer syntax (benchmarks/cache_build.py:
# CharLS through pyjpegls decodes 12-bit 3000x2500 JPEG-LS in 0.26 s where GDCM takes 0.46 s)
PREFERRED_DECODERS = {
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS Near-lossless
}


def _stored_range(ds) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def _output_range(ds) -> tuple[float, float]:
    """The value range the display pipeline (modality LUT, then VOI) can produce for ``ds``.

    Mirrors PS3.3 C.11: a VOI LUT's output is ``[0, 2^bits - 1]`` of its descriptor, a window's
    is the stored range through the rescale (what pydicom's ``apply_windowing`` produces), and
    without VOI it is the stored range through the modality LUT or rescale.
    """
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, 2.0**bits - 1
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, 2.0**bits - 1
    lo, hi = _stored_range(ds)
    slope, intercept = (
        float(ds.get("RescaleSlope", 1) or 1),
        float(ds.get("RescaleIntercept", 0) or 0),
    )
    lo, hi = lo * slope + intercept, hi * slope + intercept
    return min(lo, hi), max(lo, hi)


def read_dicom(
    path: str | Path, scale: str = "full_range", data: bytes | None = None
) -> tuple[np.ndarray, float]:
    """DICOM to display values in [0, 1]: modality LUT, VOI LUT or window, MONOCHROME1 inverted.

    ``scale=full_range`` maps the range the pixel pipeline can produce (``2^BitsStored`` levels
    when there is no rescale) to [0, 1], which is what torchxrayvision's ``read_xray_dcm`` does
    (identical for the files it reads, tested), so pretrained weights see their input range.
    ``minmax`` stretches each image's own min..max instead, for collections whose headers
    claim many more bits than the pixels use.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if scale not in DICOM_SCALES:
        raise ValueError(f"data.preprocess.dicom_scale={scale!r}: use one of {DICOM_SCALES}")
    try:
        ds = pydicom.dcmread(str(path) if data is None else io.BytesIO(data))
    except Exception as e:  # pydicom raises many types for broken files
        raise UnreadableImageError(path, f"not a readable DICOM file ({e})") from e
    if "PixelData" not in ds:
        raise UnreadableImageError(path, "DICOM file has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnreadableImageError(
            path,
            f"unsupported PhotometricInterpretation {photometric} (a radiograph is MONOCHROME1/2)",
        )
    plugin = PREFERRED_DECODERS.get(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if plugin:
        # not installed or unavailable: pydicom picks another decoder
        with contextlib.suppress(Exception):
            ds.pixel_array_options(decoding_plugin=plugin)
    try:
        arr = ds.pixel_array
    except Exception as e:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", syntax)
        raise UnreadableImageError(
            path, f"cannot decode pixel data with transfer syntax {name} ({e})"
        ) from e
    if arr.ndim != 2:
        raise UnreadableImageError(path, f"expected one 2-D frame, got shape {arr.shape}")
    lo, hi = _output_range(ds)
    arr = apply_modality_lut(arr, ds)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        arr = apply_voi_lut(arr, ds, prefer_lut=True)
    arr = arr.astype(np.float32)
    if photometric == "MONOCHROME1":  # bright background: reflect within the output range
        arr = (hi + lo) - arr
    if scale == "minmax":
        lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.clip(arr, 0.0, 1.0), 1.0


def read_image(
    path: str | Path, dicom_scale: str = "full_range", data: bytes | None = None
) -> tuple[np.ndarray, float]:
    """Read ``path`` as a 2-D grayscale array and its full-scale value.

    ``dicom_scale`` is ``read_dicom``'s ``scale`` (bitmaps carry their range in their bit depth).
    With ``data`` (an upload's bytes) nothing is read from disk: ``path`` only gives the file
    name and suffix, and the same rules apply.
    Raises ``UnreadableImageError`` (with the path and the reason) for anything it cannot read.
    """
    p = Path(path)
    if data is None and not p.is_file():
        raise UnreadableImageError(p, "file does not exist")
    suffix = p.suffix.lower()
    head = data[:132] if data is not None else None
    if suffix in DICOM_SUFFIXES or (suffix not in IMAGE_SUFFIXES and _looks_like_dicom(p, head)):
        return read_dicom(p, dicom_scale, data)
    if suffix in IMAGE_SUFFIXES:
        return read_bitmap(p, data)
    raise UnreadableImageError(p, f"unsupported file type '{suffix}'")


def _looks_like_dicom(p: Path, head: bytes | None = None) -> bool:
    if head is None:
        with open(p, "rb") as f:
            head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}


def image_kind(path: str | Path) -> str | None:
    """None when ``path`` can be an image cxrlab reads, else why not (a short reason).

    By suffix for bitmaps and ``.dcm``/``.dicom``; a file with any other suffix, or none
    (DICOM exports are often named by UID), counts when its content is DICOM (the ``DICM``
    preamble), so discovery and reading follow the same rule.
    """
    p = Path(path)
    name = p.name
    if name.startswith(".") or name.lower() in SYSTEM_FILES:
        return "hidden or system file"
    suffix = p.suffix.lower()
    if suffix in SUPPORTED_SUFFIXES:
        return None
    try:
        if _looks_like_dicom(p):
            return None
    except OSError:
        return "not readable"
    return f"not an image file ({suffix or 'no suffix'}, no DICOM preamble)"


def scan_images(folder: str | Path, recursive: bool = True) -> tuple[list[Path], dict[str, int]]:
    """Image files under ``folder`` (sorted) and ``{reason: count}`` of the files left out.

    Hidden folders are not entered. A wrong layout is the caller's to judge; this only sorts
    the files it finds into images and junk (readme files, stray archives, ``.DS_Store``).
    """
    import os

    images: list[Path] = []
    skipped: dict[str, int] = {}
    folder = Path(folder)
    for base, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for n in names:
            f = Path(base) / n
            reason = image_kind(f)
            if reason is None:
                images.append(f)
            else:
                skipped[reason] = skipped.get(reason, 0) + 1
    return sorted(images), skipped


def read_header(path: str | Path) -> dict:
    """Size and pixel format from the file's header only (no pixel decoding).

    ``{"width", "height", "bit_depth", "format", "color"}``; DICOM adds ``photometric`` and
    ``view``. Raises ``UnreadableImageError`` like ``read_image``.
    """
    p = Path(path)
    if not p.is_file():
        raise UnreadableImageError(p, "file does not exist")
    suffix = p.suffix.lower()
    if suffix in DICOM_SUFFIXES or (suffix not in IMAGE_SUFFIXES and _looks_like_dicom(p)):
        import pydicom

        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            return {
                "width": int(ds.Columns),
                "height": int(ds.Rows),
                "bit_depth": int(getattr(ds, "BitsStored", 0) or ds.BitsAllocated),
                "format": "DICOM",
                "color": str(getattr(ds, "PhotometricInterpretation", "")),
                "photometric": str(getattr(ds, "PhotometricInterpretation", "")),
                "view": str(getattr(ds, "ViewPosition", "") or ""),
            }
        except Exception as e:
            raise UnreadableImageError(p, f"not a readable DICOM header ({e})") from e
    if suffix not in IMAGE_SUFFIXES:
        raise UnreadableImageError(p, f"unsupported file type '{suffix}'")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:  # lazy: reads the header, not the pixels
            bits = {"I;16": 16, "I;16B": 16, "I": 32, "F": 32, "1": 1}.get(im.mode, 8)
            return {
                "width": int(im.width),
                "height": int(im.height),
                "bit_depth": bits,
                "format": str(im.format),
                "color": str(im.mode),
            }
    except (UnidentifiedImageError, OSError) as e:
        raise UnreadableImageError(p, f"not a readable image ({e})") from e


def dicom_tags(path: str | Path, *keywords: str) -> dict[str, str]:
    """DICOM header values by keyword (e.g. ``PatientID``, ``ViewPosition``), without reading
    pixel data; ``""`` where a tag is absent or the file is unreadable (the cache build reports
    unreadable files with their reason)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=list(keywords))
    except Exception:
        return dict.fromkeys(keywords, "")
    return {k: str(ds.get(k, "") or "") for k in keywords}
