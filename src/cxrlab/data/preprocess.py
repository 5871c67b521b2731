"""ndarray -> fixed-size uint8 square. Training (through the cache) and inference call this."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from cxrlab.data.imageio import DICOM_SCALES, read_image

ASPECTS = ("crop", "pad")
NORMALIZATIONS = ("none", "minmax", "equalize", "clahe")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a file becomes the model's uint8 square; stored in every checkpoint."""

    size: int = 224
    aspect: str = "crop"  # crop: center square (torchxrayvision's XRayCenterCrop); pad: letterbox
    normalization: str = "none"  # none | minmax | equalize | clahe
    # DICOM only: full_range (the header's bit range, as torchxrayvision) or minmax (per image)
    dicom_scale: str = "full_range"

    def __post_init__(self):
        if self.aspect not in ASPECTS:
            raise ValueError(f"data.preprocess.aspect={self.aspect!r}: use one of {ASPECTS}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"data.preprocess.normalization={self.normalization!r}: use one of {NORMALIZATIONS}"
            )
        if self.dicom_scale not in DICOM_SCALES:
            raise ValueError(
                f"data.preprocess.dicom_scale={self.dicom_scale!r}: use one of {DICOM_SCALES}"
            )
        if not (8 <= int(self.size) <= 2048):
            raise ValueError(f"data.preprocess.size={self.size}: use 8..2048 pixels")

    def to_dict(self) -> dict:
        return asdict(self)


def to_uint8(arr: np.ndarray, max_value: float) -> np.ndarray:
    if arr.dtype == np.uint8 and max_value == 255.0:
        return arr
    scaled = np.clip(arr.astype(np.float32) / max_value, 0.0, 1.0)
    return np.round(scaled * 255).astype(np.uint8)


def center_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return img[top : top + s, left : left + s]


def pad_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    s = max(h, w)
    out = np.zeros((s, s), img.dtype)
    top, left = (s - h) // 2, (s - w) // 2
    out[top : top + h, left : left + w] = img
    return out


def preprocess_array(arr: np.ndarray, max_value: float, spec: PreprocessSpec) -> np.ndarray:
    img = to_uint8(arr, max_value)
    img = center_square(img) if spec.aspect == "crop" else pad_square(img)
    interp = cv2.INTER_AREA if img.shape[0] > spec.size else cv2.INTER_LINEAR
    img = cv2.resize(img, (spec.size, spec.size), interpolation=interp)
    if spec.normalization == "minmax":
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)
    elif spec.normalization == "equalize":
        img = cv2.equalizeHist(img)
    elif spec.normalization == "clahe":
        img = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(img)
    return np.ascontiguousarray(img, dtype=np.uint8)


def load_preprocessed(path, spec: PreprocessSpec, data: bytes | None = None) -> np.ndarray:
    """Read a file and preprocess it: the function shared by the cache, the predictor and the
    HTTP API (which passes the upload's ``data``; ``path`` then only names it)."""
    arr, max_value = read_image(path, spec.dicom_scale, data)
    return preprocess_array(arr, max_value, spec)
