"""Read any supported image file into a grayscale array. The one place for file-format rules.

PNG/JPEG/TIFF/BMP (8 or 16 bit; gray, RGB or with alpha) come through OpenCV; DICOM through
pydicom (modality LUT / rescale, VOI LUT or window, MONOCHROME1 inverted). Every reader returns
``(array, max_value)``: a 2-D array and the largest value its bit depth allows, so that
``preprocess`` can map any depth to [0, 1] the same way for training and inference.
"""

from __future__ import annotations

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


def read_bitmap(path: str | Path) -> tuple[np.ndarray, float]:
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise UnreadableImageError(path, "empty file")
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise UnreadableImageError(path, "not a decodable image (corrupt, truncated or not an image)")
    arr = _to_gray(arr)
    if arr.dtype == np.uint8:
        return arr, 255.0
    if arr.dtype == np.uint16:
        return arr, 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32), float(max(1.0, np.nanmax(arr)))
    raise UnreadableImageError(path, f"unsupported pixel type {arr.dtype}")


def read_dicom(path: str | Path) -> tuple[np.ndarray, float]:
    """DICOM to display values: modality LUT, VOI LUT/window, MONOCHROME1 inverted."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:  # pydicom raises many types for broken files
        raise UnreadableImageError(path, f"not a readable DICOM file ({e})") from e
    if "PixelData" not in ds:
        raise UnreadableImageError(path, "DICOM file has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnreadableImageError(
            path, f"unsupported PhotometricInterpretation {photometric} (expected MONOCHROME1/2)"
        )
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise UnreadableImageError(
            path, f"cannot decode pixel data ({e}); transfer syntax {ds.file_meta.TransferSyntaxUID}"
        ) from e
    if arr.ndim != 2:
        raise UnreadableImageError(path, f"expected one 2-D frame, got shape {arr.shape}")
    arr = apply_modality_lut(arr, ds).astype(np.float32)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        arr = apply_voi_lut(arr, ds, prefer_lut=True).astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if photometric == "MONOCHROME1":
        arr = 1.0 - arr
    return arr, 1.0


def read_image(path: str | Path) -> tuple[np.ndarray, float]:
    """Read ``path`` as a 2-D grayscale array and its full-scale value.

    Raises ``UnreadableImageError`` (with the path and the reason) for anything it cannot read.
    """
    p = Path(path)
    if not p.is_file():
        raise UnreadableImageError(p, "file does not exist")
    suffix = p.suffix.lower()
    if suffix in DICOM_SUFFIXES or (suffix == "" and _looks_like_dicom(p)):
        return read_dicom(p)
    if suffix in IMAGE_SUFFIXES:
        return read_bitmap(p)
    raise UnreadableImageError(p, f"unsupported file type '{suffix}'")


def _looks_like_dicom(p: Path) -> bool:
    with open(p, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"



def read_header(path: str | Path) -> dict:
    """Size and pixel format from the file's header only (no pixel decoding).

    ``{"width", "height", "bit_depth", "format", "color"}``; DICOM adds ``photometric`` and
    ``view``. Raises ``UnreadableImageError`` like ``read_image``.
    """
    p = Path(path)
    if not p.is_file():
        raise UnreadableImageError(p, "file does not exist")
    suffix = p.suffix.lower()
    if suffix in DICOM_SUFFIXES or (suffix == "" and _looks_like_dicom(p)):
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
