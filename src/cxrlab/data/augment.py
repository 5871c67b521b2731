"""Batched, per-sample random augmentation on tensors, on whatever device the batch is on.

One affine warp per batch (rotation, scaling, shear, translation, flips and random resized crop
folded into one matrix per sample, applied with ``grid_sample``), then per-sample brightness,
contrast, gamma and Gaussian noise. Parameters are drawn per sample, not once per batch (which
is what torchvision.transforms.v2 does on a batched tensor). Randomness comes from torch's global
generators, which ``seed_everything`` seeds: runs are reproducible under the run's seed.

The LightningModule calls this in ``on_after_batch_transfer`` for training batches only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# where augmentation runs (augment.device), and the names earlier configs used
AUGMENT_DEVICES = ("batch", "cpu")
DEVICE_ALIASES = {"gpu_batch": "batch"}  # it also ran on the CPU when there was no GPU


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges; every zero means "off". Names and meanings follow original system 002's config."""

    rotation: float = 0.0  # degrees, uniform in [-r, r]
    scaling: float = 0.0  # fraction, zoom uniform in [1 - s, 1 + s]
    shear: float = 0.0  # degrees, uniform in [-s, s]
    translation: float = 0.0  # fraction of the side, uniform in [-t, t] on each axis
    horizontal_flip: float = 0.0  # probability
    vertical_flip: float = 0.0  # probability
    crop_scale: float = 1.0  # random resized crop: area fraction uniform in [crop_scale, 1]
    brightness: float = 0.0  # additive, uniform in [-b, b] (image in [0, 1])
    contrast: float = 0.0  # factor uniform in [1 - c, 1 + c] around the image mean
    gamma: float = 0.0  # exponent exp(uniform(-g, g))
    noise: float = 0.0  # Gaussian noise std uniform in [0, n]
    # batch: whole batches, per-sample parameters, on the batch's own device (the GPU when the
    # run trains on one, the CPU otherwise), in the LightningModule; cpu: per image with
    # albumentations in the DataLoader workers, same ranges
    device: str = "batch"

    def __post_init__(self):
        if self.device in DEVICE_ALIASES:
            log.warning(
                "augment.device=%s is now called %s", self.device, DEVICE_ALIASES[self.device]
            )
            object.__setattr__(self, "device", DEVICE_ALIASES[self.device])
        if self.device not in AUGMENT_DEVICES:
            raise ValueError(f"augment.device={self.device!r}: use one of {list(AUGMENT_DEVICES)}")
        for f in fields(self):
            if f.name == "device":
                continue
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"augment.{f.name}={v!r}: must be a number >= 0")
        for name in ("horizontal_flip", "vertical_flip"):
            if getattr(self, name) > 1:
                raise ValueError(f"augment.{name}={getattr(self, name)}: a probability in [0, 1]")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"augment.crop_scale={self.crop_scale}: use a value in (0, 1]")
        if self.scaling >= 1:
            raise ValueError(f"augment.scaling={self.scaling}: use a fraction below 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def geometric(self) -> bool:
        return bool(
            self.rotation
            or self.scaling
            or self.shear
            or self.translation
            or self.horizontal_flip
            or self.vertical_flip
            or self.crop_scale < 1
        )

    @property
    def photometric(self) -> bool:
        return bool(self.brightness or self.contrast or self.gamma or self.noise)


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, device=like.device, dtype=torch.float32) * (hi - lo) + lo


class BatchAugment(torch.nn.Module):
    """``x`` (B, C, H, W) float in [0, 1] -> augmented, same shape, dtype and device."""

    def __init__(self, cfg: AugmentConfig | None = None, **kwargs):
        super().__init__()
        self.cfg = cfg if cfg is not None else AugmentConfig(**kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.cfg).items() if v and k != "device")

    def affine_matrices(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """(n, 2, 3) matrices mapping output to input coordinates in [-1, 1]."""
        c = self.cfg
        ang = _uniform(n, -c.rotation, c.rotation, like) * (math.pi / 180)
        sh = _uniform(n, -c.shear, c.shear, like) * (math.pi / 180)
        zoom = _uniform(n, 1 - c.scaling, 1 + c.scaling, like)
        # random resized crop: a crop of area a is shown at full size, i.e. zoom 1/sqrt(a)
        zoom = zoom / _uniform(n, c.crop_scale, 1.0, like).sqrt()
        fx = torch.where(torch.rand(n, device=like.device) < c.horizontal_flip, -1.0, 1.0)
        fy = torch.where(torch.rand(n, device=like.device) < c.vertical_flip, -1.0, 1.0)
        cos, sin = torch.cos(ang), torch.sin(ang)
        # R @ Shear_x @ diag(1/zoom) @ Flip  (sampling the inverse map; ranges are symmetric)
        a = torch.stack([cos, -sin + cos * torch.tan(sh), sin, cos + sin * torch.tan(sh)], 1)
        a = a.view(n, 2, 2) / zoom.view(n, 1, 1)
        a = a * torch.stack([fx, fy], 1).view(n, 1, 2)
        t = _uniform(2 * n, -c.translation, c.translation, like).view(n, 2, 1) * 2
        return torch.cat([a, t], 2)

    def draw(self, n: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every random parameter of a batch, drawn in one fixed order (reproducible)."""
        c = self.cfg
        p: dict[str, torch.Tensor] = {}
        if c.geometric:
            p["theta"] = self.affine_matrices(n, like)
        if c.contrast:
            p["contrast"] = _uniform(n, 1 - c.contrast, 1 + c.contrast, like)
        if c.brightness:
            p["brightness"] = _uniform(n, -c.brightness, c.brightness, like)
        if c.gamma:
            p["gamma"] = torch.exp(_uniform(n, -c.gamma, c.gamma, like))
        if c.noise:
            p["noise"] = _uniform(n, 0, c.noise, like)
        return p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Floats in [0, 1] -> same dtype; uint8 -> float32 in [0, 1].

        uint8 batches on the CPU take a faster route with the same parameters: OpenCV warps
        each image (SIMD, uint8), brightness/contrast/gamma become one 256-entry lookup table
        per sample, and noise comes from a bank of Gaussian fields refreshed every call. On
        GPUs, and for float input, everything is batched tensor arithmetic.
        """
        if x.dtype == torch.uint8:
            if x.device.type == "cpu":
                return self._apply_uint8_cpu(x)
            x = x.float().div_(255.0)
        if not x.is_floating_point():
            raise TypeError(f"BatchAugment expects uint8 or floats in [0, 1], got {x.dtype}")
        n = x.shape[0]
        p = self.draw(n, x)
        shape = (n, 1, 1, 1)
        if "theta" in p:
            grid = F.affine_grid(p["theta"].to(x.dtype), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.cfg.photometric:
            if "contrast" in p:
                mean = x.mean(dim=(1, 2, 3), keepdim=True)
                x = (x - mean) * p["contrast"].view(shape).to(x.dtype) + mean
            if "brightness" in p:
                x = x + p["brightness"].view(shape).to(x.dtype)
            if "gamma" in p:
                x = x.clamp(0, 1) ** p["gamma"].view(shape).to(x.dtype)
            if "noise" in p:
                x = x + torch.randn_like(x) * p["noise"].view(shape).to(x.dtype)
            x = x.clamp(0, 1)
        return x

    # ------------------------------------------------------------------ the CPU route
    def _apply_uint8_cpu(self, x8: torch.Tensor) -> torch.Tensor:
        import cv2

        n, ch, h, w = x8.shape
        p = self.draw(n, x8)
        if "theta" in p:
            # normalized output->input map (align_corners=False) to pixels: S^-1 @ theta @ S
            s = torch.tensor(
                [[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]], dtype=torch.float64
            )
            s_inv = torch.linalg.inv(s)
            theta = torch.cat(
                [p["theta"].double(), torch.tensor([[[0, 0, 1.0]]]).expand(n, 1, 3)], 1
            )
            mats = (s_inv @ theta @ s)[:, :2].numpy()
            src = x8.numpy()
            out = np.empty_like(src)
            flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
            for i in range(n):
                for c in range(ch):
                    cv2.warpAffine(
                        src[i, c],
                        mats[i],
                        (w, h),
                        dst=out[i, c],
                        flags=flags,
                        borderMode=cv2.BORDER_CONSTANT,
                        borderValue=0,
                    )
            x8 = torch.from_numpy(out)
        # brightness / contrast / gamma as one lookup table per sample, in the float order;
        # cv2.LUT with a float32 table also does the uint8 -> [0, 1] conversion
        lut = torch.arange(256, dtype=torch.float32).div_(255.0).expand(n, 256)
        if self.cfg.photometric:
            if "contrast" in p:
                mean = x8.view(n, -1).sum(1, dtype=torch.int64).float() / (ch * h * w * 255.0)
                lut = (lut - mean.view(n, 1)) * p["contrast"].view(n, 1) + mean.view(n, 1)
            if "brightness" in p:
                lut = lut + p["brightness"].view(n, 1)
            if "gamma" in p:
                lut = lut.clamp(0, 1) ** p["gamma"].view(n, 1)
            lut = lut.clamp(0, 1)
        luts = np.ascontiguousarray(lut.numpy(), dtype=np.float32)
        src = x8.numpy()
        out = np.empty((n, ch, h, w), np.float32)
        for i in range(n):
            for c in range(ch):
                cv2.LUT(src[i, c], luts[i], dst=out[i, c])
        if "noise" in p:
            self._add_noise(out, p["noise"].numpy())
            np.clip(out, 0, 1, out=out)
        return torch.from_numpy(out)

    def _add_noise(self, out: np.ndarray, std: np.ndarray, bank_size: int = 8) -> None:
        """Add unit Gaussian noise x std per sample, in place.

        Fields are windows at random offsets into a bank of double-size Gaussian fields, one of
        which is redrawn every call: per-pixel Gaussian noise at the cost of a copy.
        """
        n, ch, h, w = out.shape
        bank = getattr(self, "_bank", None)
        if bank is None or bank.shape[1:] != (2 * h, 2 * w):
            bank = torch.randn(bank_size, 2 * h, 2 * w).numpy()
            self._bank, self._bank_next = bank, 0
        bank[self._bank_next] = torch.randn(2 * h, 2 * w).numpy()
        self._bank_next = (self._bank_next + 1) % bank_size
        pick = torch.randint(0, bank_size, (n * ch,)).tolist()
        dy, dx = torch.randint(0, h, (n * ch,)).tolist(), torch.randint(0, w, (n * ch,)).tolist()
        for k in range(n * ch):
            i, c = divmod(k, ch)
            window = bank[pick[k], dy[k] : dy[k] + h, dx[k] : dx[k] + w]
            out[i, c] += window * np.float32(std[i])


def albumentations_pipeline(cfg: AugmentConfig, size: int):
    """The same ranges as ``BatchAugment``, per image in DataLoader workers (``device=cpu``).

    For augmentations that only exist in albumentations, or machines where the device is the
    bottleneck. Works on uint8 (H, W) arrays; the GPU path remains the default.
    """
    import albumentations as A
    import cv2

    steps = []
    if cfg.crop_scale < 1:
        steps.append(
            A.RandomResizedCrop(
                size=(size, size), scale=(cfg.crop_scale, 1.0), ratio=(1.0, 1.0), p=1.0
            )
        )
    if cfg.rotation or cfg.scaling or cfg.shear or cfg.translation:
        steps.append(
            A.Affine(
                scale=(1 - cfg.scaling, 1 + cfg.scaling),
                translate_percent=(-cfg.translation, cfg.translation),
                rotate=(-cfg.rotation, cfg.rotation),
                shear=(-cfg.shear, cfg.shear),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=1.0,
            )
        )
    if cfg.horizontal_flip:
        steps.append(A.HorizontalFlip(p=cfg.horizontal_flip))
    if cfg.vertical_flip:
        steps.append(A.VerticalFlip(p=cfg.vertical_flip))
    if cfg.brightness or cfg.contrast:
        steps.append(
            A.RandomBrightnessContrast(
                brightness_limit=cfg.brightness, contrast_limit=cfg.contrast, p=1.0
            )
        )
    if cfg.gamma:
        steps.append(
            A.RandomGamma(
                gamma_limit=(100 * math.exp(-cfg.gamma), 100 * math.exp(cfg.gamma)), p=1.0
            )
        )
    if cfg.noise:
        steps.append(A.GaussNoise(std_range=(0.0, cfg.noise), p=1.0))
    return A.Compose(steps)
