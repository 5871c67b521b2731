"""Does Grad-CAM point at the lesion? The pointing game on the phantom's lesion masks.

    python benchmarks/gradcam_pointing.py [--ckpt best.ckpt] [--model resnet18] [--size 128]
                                          [--epochs 10]

Without --ckpt it trains a model (default ResNet18, 128 px, 10 epochs) on the phantom (binary).
For every pneumonia image of the run's test split, the heatmap of the pneumonia class is
computed on the preprocessed image and the phantom's lesion mask is put through the same
geometry (crop/pad + resize). A hit: the heatmap's maximum lies inside the mask (0 px) or near
it (within 1/16 of the width: 8 px at 128 px, 14 px at 224 px). Chance: the same score for a
uniformly random point, averaged over the images (the mask's area fraction at 0 px). Also
reported: the share of the heatmap's energy inside the mask (energy pointing game; chance = the
mask's area).

Every method (gradcam, gradcam++, hirescam, layercam) on every stage (stride 32, 16, 8) is
scored twice: on a selection set (pneumonia images of a phantom drawn with another seed, never
seen in training) where the best combination is chosen, and on the run's test split, where
the chosen one is reported. Writes
benchmarks/results/gradcam_pointing_<backbone>[_<size>].json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
from common import BENCH, save, train_py  # noqa: E402


def train(run_dir: Path, model: str, size: int, epochs: int) -> Path:
    train_py(
        f"model={model}",
        f"data.preprocess.size={size}",
        "data.dataset_size=800",
        f"trainer.max_epochs={epochs}",
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


def lesion_set(paths, spec):
    """Preprocessed images and their lesion masks (same geometry) for these pneumonia files."""
    from cxrlab.data.imageio import read_image
    from cxrlab.data.preprocess import PreprocessSpec, load_preprocessed, preprocess_array

    geometry = PreprocessSpec(**{**spec.to_dict(), "normalization": "none"})
    images, masks = [], []
    for path in paths:
        m = mask_for(path)
        if not m.is_file():
            continue
        arr, _ = read_image(m)
        mask = preprocess_array((arr > 0).astype(np.uint8) * 255, 255, geometry) > 127
        if mask.any():
            images.append(load_preprocessed(path, spec))
            masks.append(mask)
    return np.stack(images), np.stack(masks)


def selection_files(n_patients: int = 150) -> list[str]:
    from cxrlab.data import phantom

    root = BENCH / "gradcam-selection"
    phantom.generate(root, phantom.PhantomConfig(num_patients=n_patients, seed=1), progress=False)
    return sorted(str(p) for p in (root / "chest_xray").rglob("PNEUMONIA/*.jpeg"))


def counterfactual(pred, test_paths) -> dict:
    """Does the model use the lesion at all? Each pneumonia test radiograph is drawn again from
    its phantom plan with the same anatomy and seed but no lesion; both go through the same
    preprocessing. Reported: the mean predicted pneumonia probability with and without."""
    import dataclasses

    from cxrlab.data import phantom
    from cxrlab.data.preprocess import preprocess_array

    root = Path(test_paths[0]).parents[3]
    cfg = phantom.PhantomConfig.read(root)
    wanted = {str(Path(p).relative_to(root)) for p in test_paths}
    jobs = [j for j in phantom.plan(cfg) if j.path in wanted]
    with_lesion, without = [], []
    for j in jobs:
        img, _ = phantom.render(j.anat, j.seed, j.width)
        clean, _ = phantom.render(dataclasses.replace(j.anat, finding="normal"), j.seed, j.width)
        with_lesion.append(preprocess_array(img, 255, pred.spec))
        without.append(preprocess_array(clean, 255, pred.spec))

    def p_pneumonia(images):
        return pred.predict_arrays(np.stack(images))[:, pred.classes.index("pneumonia")]

    a, b = p_pneumonia(with_lesion), p_pneumonia(without)
    return {
        "images": len(jobs),
        "mean_p_pneumonia_with_lesion": round(float(a.mean()), 3),
        "mean_p_pneumonia_same_image_without": round(float(b.mean()), 3),
    }


def near(size: int) -> int:
    """The "near the lesion" tolerance: 1/16 of the width (8 px at 128, 14 px at 224)."""
    return round(size / 16)


def score(pred, images, masks, layer: str, method: str) -> dict:
    from cxrlab.inference.gradcam import pointing_hits

    heat = np.concatenate(
        [
            pred.gradcam(images[i : i + 16], ["pneumonia"] * len(images[i : i + 16]), layer, method)
            for i in range(0, len(images), 16)
        ]
    )
    out = {}
    for tol in (0, near(images.shape[-1])):
        hits = pointing_hits(heat, masks, tolerance=tol)
        k = np.ones((2 * tol + 1, 2 * tol + 1), np.uint8)
        chance = float(np.mean([cv2.dilate(m.astype(np.uint8), k).mean() for m in masks]))
        out[f"tolerance_{tol}px"] = {
            "pointing_accuracy": round(float(hits.mean()), 3),
            "chance": round(chance, 3),
            "ratio_to_chance": round(float(hits.mean()) / chance, 2),
        }
    energy = (heat * masks).sum((1, 2)) / np.maximum(heat.sum((1, 2)), 1e-8)
    out["energy_in_mask"] = round(float(energy.mean()), 3)
    return out


def figure(pred, images, masks, out: Path, n: int = 4, tile: int = 256) -> Path:
    """An image grid for the docs: per row one test radiograph with its lesion outlined
    (green), classic Grad-CAM on the last stage, and Grad-CAM++ on the stride-8 stage, each
    heatmap's peak marked with a white cross."""
    from cxrlab.inference.gradcam import overlay

    panels = [("lesion (phantom mask)", None, None)]
    panels += [("gradcam, stride32", "stride32", "gradcam")]
    panels += [("gradcam++, stride8", "stride8", "gradcam++")]
    rows = []
    for img, mask in zip(images[:n], masks[:n]):
        row = []
        for _, layer, method in panels:
            if layer is None:
                rgb = np.repeat(img[..., None], 3, axis=2)
            else:
                heat = pred.gradcam(img[None], ["pneumonia"], layer, method)[0]
                rgb = overlay(img, heat)
            rgb = cv2.resize(rgb, (tile, tile), interpolation=cv2.INTER_LINEAR)
            m = cv2.resize(mask.astype(np.uint8), (tile, tile), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(rgb, contours, -1, (0, 255, 0), 1)
            if layer is not None:
                y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
                c = (int((x + 0.5) * tile / heat.shape[1]), int((y + 0.5) * tile / heat.shape[0]))
                cv2.drawMarker(rgb, c, (255, 255, 255), cv2.MARKER_CROSS, 18, 2)
            row.append(rgb)
        rows.append(np.concatenate(row, axis=1))
    header = np.full((28, tile * len(panels), 3), 255, np.uint8)
    for i, (title, _, _) in enumerate(panels):
        cv2.putText(header, title, (i * tile + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, 0, 1)
    grid = np.concatenate([header, *rows], axis=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt")
    ap.add_argument("--model", default="resnet18", help="the backbone trained without --ckpt")
    ap.add_argument("--size", type=int, default=128, help="the input size trained without --ckpt")
    ap.add_argument("--epochs", type=int, default=10, help="epochs trained without --ckpt")
    ap.add_argument("--figure", help="also write an example grid here (docs/img/...jpg)")
    ap.add_argument("--only-figure", action="store_true", help="write --figure, score nothing")
    args = ap.parse_args()
    run_dir = BENCH / f"gradcam-run-{args.model}{'' if args.size == 128 else f'-{args.size}'}"
    ckpt = Path(args.ckpt) if args.ckpt else train(run_dir, args.model, args.size, args.epochs)

    from cxrlab.inference.gradcam import METHODS, gradcam_layer
    from cxrlab.inference.predictor import Predictor

    pred = Predictor.from_checkpoint(ckpt, "cpu")
    backbone = pred.model.hparams["backbone"]
    test = pd.read_csv(ckpt.parents[1] / "report" / "predictions.csv")
    positives = list(test.loc[test["label"] == "pneumonia", "path"])
    if args.figure:
        images, masks = lesion_set(positives[:4], pred.spec)
        print("wrote", figure(pred, images, masks, Path(args.figure)))
        if args.only_figure:
            return
    sets = {
        "selection": lesion_set(selection_files(), pred.spec),
        "test": lesion_set(positives, pred.spec),
    }
    metrics = json.loads((ckpt.parents[1] / "test_metrics.json").read_text())["metrics"]
    result = {
        "checkpoint": str(ckpt),
        "backbone": backbone,
        "model_test_auroc": round(metrics["test/auroc"], 4),
        "input_size": int(sets["test"][0].shape[-1]),
        "images": {name: len(imgs) for name, (imgs, _) in sets.items()},
        "mean_mask_area_fraction": {
            name: round(float(masks.mean()), 3) for name, (_, masks) in sets.items()
        },
    }
    size = result["input_size"]
    result["counterfactual_test"] = counterfactual(pred, positives)
    print(result["counterfactual_test"], flush=True)
    table = []
    for stride in (32, 16, 8):
        layer = f"stride{stride}"
        for method in METHODS:
            row = {"layer": layer, "module": gradcam_layer(backbone, layer), "method": method}
            for name, (imgs, masks) in sets.items():
                row[name] = score(pred, imgs, masks, layer, method)
            table.append(row)
            print(
                f"{layer:9s} {method:10s} "
                + "  ".join(
                    f"{n}: {row[n]['tolerance_0px']['pointing_accuracy']:.3f}/"
                    f"{row[n][f'tolerance_{near(size)}px']['pointing_accuracy']:.3f}"
                    for n in sets
                ),
                flush=True,
            )
    result["table"] = table
    best = max(table, key=lambda r: r["selection"]["tolerance_0px"]["pointing_accuracy"])
    classic = next(r for r in table if r["layer"] == "stride32" and r["method"] == "gradcam")
    result["chosen_on_selection"] = {k: best[k] for k in ("layer", "module", "method", "test")}
    result["classic_gradcam_last_stage"] = classic["test"]
    # focal (bacterial) and diffuse (viral) lesions separately: the masks differ ~5x in area
    for row, key in ((best, "chosen_on_selection"), (classic, "classic_gradcam_last_stage")):
        result[f"{key}_by_finding"] = {
            kind: score(pred, *lesion_set(files, pred.spec), row["layer"], row["method"])
            for kind in ("bacteria", "virus")
            if (files := [f for f in positives if f"_{kind}_" in Path(f).name])
        }
    save(
        f"gradcam_pointing_{backbone}{'' if size == 128 else f'_{size}'}", result, quiet=("table",)
    )


if __name__ == "__main__":
    main()
