"""Does Grad-CAM point at the lesion? The pointing game on the phantom's lesion masks.

    python benchmarks/gradcam_pointing.py [--ckpt best.ckpt]

Without --ckpt it trains a ResNet18 at 128 px on the phantom (binary, 10 epochs). For every
pneumonia image of the run's test split, the Grad-CAM heatmap of the pneumonia class is
computed on the preprocessed image and the phantom's lesion mask is put through the same
geometry (crop/pad + resize). A hit: the heatmap's maximum lies inside the mask (0 px) or
within 8 px of it (about 6% of the width). Chance: the same score for a uniformly random point,
averaged over the images (the mask's area fraction at 0 px). Writes logs/bench/gradcam_pointing.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import BENCH, machine, train_py  # noqa: E402


def train(run_dir: Path) -> Path:
    train_py(
        "model=resnet18",
        "data.preprocess.size=128",
        "data.dataset_size=800",
        "trainer.max_epochs=10",
        "logger=csv",
        "callbacks.progress_bar=null",
        "evaluation.bootstrap=200",
        f"paths.data_dir={BENCH / 'gradcam-data'}",
        f"hydra.run.dir={run_dir}",
    )
    return run_dir / "checkpoints" / "best.ckpt"


def mask_for(image_path: str) -> Path:
    p = Path(image_path)
    root = p.parents[3]  # <root>/chest_xray/<split>/<FOLDER>/<name>
    return root / "masks" / p.parts[-3] / p.parts[-2] / f"{p.stem}.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt")
    args = ap.parse_args()
    run_dir = BENCH / "gradcam-run"
    ckpt = Path(args.ckpt) if args.ckpt else train(run_dir)

    from cxrlab.data.imageio import read_image
    from cxrlab.data.preprocess import PreprocessSpec, load_preprocessed, preprocess_array
    from cxrlab.inference.gradcam import pointing_hits
    from cxrlab.inference.predictor import Predictor

    pred = Predictor.from_checkpoint(ckpt, "cpu")
    report = ckpt.parents[1] / "report" / "predictions.csv"
    test = pd.read_csv(report)
    test = test[test["label"] == "pneumonia"]
    geometry = PreprocessSpec(**{**pred.spec.to_dict(), "normalization": "none"})
    images, masks = [], []
    for path in test["path"]:
        m = mask_for(path)
        if not m.is_file():
            continue
        arr, _ = read_image(m)
        mask = preprocess_array((arr > 0).astype(np.uint8) * 255, 255, geometry) > 127
        if mask.any():
            images.append(load_preprocessed(path, pred.spec))
            masks.append(mask)
    images, masks = np.stack(images), np.stack(masks)
    from cxrlab.inference.gradcam import gradcam_layer

    result = {"benchmark": "gradcam_pointing", "machine": machine(), "checkpoint": str(ckpt)}
    metrics = json.loads((ckpt.parents[1] / "test_metrics.json").read_text())["metrics"]
    result["model_test_auroc"] = round(metrics["test/auroc"], 4)
    result["images"] = len(images)
    size = images.shape[-1]
    for layer in ("last", "previous"):  # the same images and checkpoint, two target layers
        heat = np.concatenate(
            [
                pred.gradcam(images[i : i + 16], ["pneumonia"] * len(images[i : i + 16]), layer)
                for i in range(0, len(images), 16)
            ]
        )
        out = result[f"layer_{layer}"] = {
            "module": gradcam_layer(pred.model.hparams["backbone"], layer)
        }
        for tol in (0, 8):
            hits = pointing_hits(heat, masks, tolerance=tol)
            k = np.ones((2 * tol + 1, 2 * tol + 1), np.uint8)
            chance = float(np.mean([cv2.dilate(m.astype(np.uint8), k).mean() for m in masks]))
            out[f"tolerance_{tol}px"] = {
                "pointing_accuracy": round(float(hits.mean()), 3),
                "chance": round(chance, 3),
                "ratio_to_chance": round(float(hits.mean()) / chance, 2),
            }
    result["mean_mask_area_fraction"] = round(float(masks.mean()), 3)
    result["input_size"] = size
    BENCH.mkdir(parents=True, exist_ok=True)
    (BENCH / "gradcam_pointing.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
