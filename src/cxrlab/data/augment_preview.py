"""What an augmentation preset does, shown on phantom radiographs: a PNG grid, one row per image,
the original first (``python -m cxrlab.data.augment_preview --preview aug.png --preset xray``).

A tool for people choosing ranges; kept apart from ``cxrlab.data.augment`` (which training and
serving import) because it draws its images with the phantom generator.
"""

from __future__ import annotations

import torch

from cxrlab.data.augment import AugmentConfig, BatchAugment


def preview(out: str, cfg: AugmentConfig, n: int = 6, seed: int = 0, size: int = 192) -> str:
    """A PNG grid: each row one phantom image, first column the original, then augmentations."""
    import cv2
    import numpy as np

    from cxrlab.data import phantom
    from cxrlab.data.preprocess import PreprocessSpec, preprocess_array

    torch.manual_seed(seed)
    pcfg = phantom.PhantomConfig(num_patients=4, seed=seed)
    jobs = phantom.plan(pcfg)[:4]
    rows = []
    aug = BatchAugment(cfg)
    for job in jobs:
        img, _ = phantom.render(job.anat, job.seed, 512)
        sq = preprocess_array(img, 255.0, PreprocessSpec(size=size))
        x = torch.from_numpy(sq).float().div(255).view(1, 1, size, size).repeat(n, 1, 1, 1)
        y = aug(x)
        tiles = [sq] + [(y[i, 0].numpy() * 255).round().astype(np.uint8) for i in range(n)]
        rows.append(np.hstack(tiles))
    cv2.imwrite(out, np.vstack(rows))
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m cxrlab.data.augment_preview --preview out.png [--preset xray]``."""
    import argparse
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    p = argparse.ArgumentParser(description="Write a PNG grid of augmented phantom images.")
    p.add_argument("--preview", required=True, help="output image (PNG or JPEG)")
    p.add_argument("--preset", default="xray", help="an option of configs/augment/")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    configs = Path(__file__).resolve().parents[3] / "configs"
    with initialize_config_dir(str(configs), version_base="1.3"):
        cfg = compose("train.yaml", overrides=[f"augment={args.preset}"])
    preview(args.preview, AugmentConfig(**OmegaConf.to_container(cfg.augment)), seed=args.seed)


if __name__ == "__main__":
    main()
