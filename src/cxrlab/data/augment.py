"""Batched, per-sample random augmentation on tensors, on whatever device the batch is on.

One affine warp per batch (rotation, scaling, shear, translation, flips and random resized crop
folded into one matrix per sample, applied with ``grid_sample``), then per-sample brightness,
contrast, gamma and Gaussian noise. Parameters are drawn per sample, not once per batch (which
is what torchvision.transforms.v2 does on a batched tensor). Randomness comes from torch's global
generators, which ``seed_everything`` seeds: runs are reproducible under the run's seed.

The LightningModule calls this in ``on_after_batch_transfer`` for training batches only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges; every zero means "off". Names and meanings follow the original system's config."""

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

    def __post_init__(self):
        for f in fields(self):
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

    @property
    def geometric(self) -> bool:
        return bool(self.rotation or self.scaling or self.shear or self.translation
                    or self.horizontal_flip or self.vertical_flip or self.crop_scale < 1)

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
        return ", ".join(f"{k}={v}" for k, v in asdict(self.cfg).items() if v)

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"BatchAugment expects floats in [0, 1], got {x.dtype}")
        n = x.shape[0]
        c = self.cfg
        if c.geometric:
            theta = self.affine_matrices(n, x).to(x.dtype)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if c.photometric:
            shape = (n, 1, 1, 1)
            if c.contrast:
                mean = x.mean(dim=(1, 2, 3), keepdim=True)
                k = _uniform(n, 1 - c.contrast, 1 + c.contrast, x).view(shape).to(x.dtype)
                x = (x - mean) * k + mean
            if c.brightness:
                x = x + _uniform(n, -c.brightness, c.brightness, x).view(shape).to(x.dtype)
            if c.gamma:
                g = torch.exp(_uniform(n, -c.gamma, c.gamma, x)).view(shape).to(x.dtype)
                x = x.clamp(0, 1) ** g
            if c.noise:
                std = _uniform(n, 0, c.noise, x).view(shape).to(x.dtype)
                x = x + torch.randn_like(x) * std
            x = x.clamp(0, 1)
        return x


AUGMENT_DEVICES = ("gpu_batch", "cpu")


def albumentations_pipeline(cfg: AugmentConfig, size: int):
    """The same ranges as ``BatchAugment``, per image in DataLoader workers (``device=cpu``).

    For augmentations that only exist in albumentations, or machines where the device is the
    bottleneck. Works on uint8 (H, W) arrays; the GPU path remains the default.
    """
    import albumentations as A
    import cv2

    steps = []
    if cfg.crop_scale < 1:
        steps.append(A.RandomResizedCrop(size=(size, size), scale=(cfg.crop_scale, 1.0),
                                         ratio=(1.0, 1.0), p=1.0))
    if cfg.rotation or cfg.scaling or cfg.shear or cfg.translation:
        steps.append(A.Affine(scale=(1 - cfg.scaling, 1 + cfg.scaling),
                              translate_percent=(-cfg.translation, cfg.translation),
                              rotate=(-cfg.rotation, cfg.rotation), shear=(-cfg.shear, cfg.shear),
                              border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0))
    if cfg.horizontal_flip:
        steps.append(A.HorizontalFlip(p=cfg.horizontal_flip))
    if cfg.vertical_flip:
        steps.append(A.VerticalFlip(p=cfg.vertical_flip))
    if cfg.brightness or cfg.contrast:
        steps.append(A.RandomBrightnessContrast(brightness_limit=cfg.brightness,
                                                contrast_limit=cfg.contrast, p=1.0))
    if cfg.gamma:
        steps.append(A.RandomGamma(gamma_limit=(100 * math.exp(-cfg.gamma),
                                                100 * math.exp(cfg.gamma)), p=1.0))
    if cfg.noise:
        steps.append(A.GaussNoise(std_range=(0.0, cfg.noise), p=1.0))
    return A.Compose(steps)


def preview(out: str, cfg: AugmentConfig, n: int = 6, seed: int = 0, size: int = 192) -> str:
    """A PNG grid: each row one phantom image, first column the original, then augmentations."""
    import cv2
    import numpy as np

    from cxrlab.data import phantom

    torch.manual_seed(seed)
    pcfg = phantom.PhantomConfig(num_patients=4, seed=seed)
    jobs = phantom.plan(pcfg)[:4]
    rows = []
    aug = BatchAugment(cfg)
    for job in jobs:
        img, _ = phantom.render(job.anat, job.seed, 512)
        from cxrlab.data.preprocess import PreprocessSpec, preprocess_array

        sq = preprocess_array(img, 255.0, PreprocessSpec(size=size))
        x = torch.from_numpy(sq).float().div(255).view(1, 1, size, size).repeat(n, 1, 1, 1)
        y = aug(x)
        tiles = [sq] + [(y[i, 0].numpy() * 255).round().astype(np.uint8) for i in range(n)]
        rows.append(np.hstack(tiles))
    cv2.imwrite(out, np.vstack(rows))
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m cxrlab.data.augment --preview out.png [--preset xray]``."""
    import argparse
    from pathlib import Path

    import yaml

    p = argparse.ArgumentParser(description="Write a PNG grid of augmented phantom images.")
    p.add_argument("--preview", required=True, help="output PNG")
    p.add_argument("--preset", default="xray", help="a file name in configs/augment/")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg_file = Path(__file__).resolve().parents[3] / "configs" / "augment" / f"{args.preset}.yaml"
    values = {k: v for k, v in yaml.safe_load(cfg_file.read_text()).items()
              if not k.startswith("_") and k != "device"}
    preview(args.preview, AugmentConfig(**values), seed=args.seed)


if __name__ == "__main__":
    main()
