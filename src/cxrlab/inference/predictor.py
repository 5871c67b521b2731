"""Predict from files with a checkpoint alone: no config, the training run's exact input path.

``Predictor.from_checkpoint(path)`` restores the backbone, class names, preprocessing
(``PreprocessSpec``), input normalization (``InputSpec``) and decision threshold saved by
train.py, loading only tensors and plain types (``weights_only``). Files go through the same
``load_preprocessed`` the cache used for training and the module's ``to_network_input``.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrlab.checkpoints import load_model
from cxrlab.data.imageio import UnreadableImageError, scan_images
from cxrlab.data.preprocess import load_preprocessed
from cxrlab.errors import EXIT_USER_ERROR, UserError
from cxrlab.models.module import CXRClassifier
from cxrlab.utils.progress import track

log = logging.getLogger(__name__)


class Predictor:
    def __init__(
        self,
        model: CXRClassifier,
        device: str | torch.device | None = None,
        gradcam_layer: str | None = None,
        gradcam_method: str | None = None,
    ):
        from cxrlab.inference.gradcam import DEFAULT_LAYER, DEFAULT_METHOD, GradCAM

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().to(self.device)
        # stride32 (last) | stride16 (previous) | stride8 | a module path; see gradcam.py.
        # Checked now, so a wrong --gradcam-layer stops serve.py at start, not a request.
        self.gradcam_layer = gradcam_layer or DEFAULT_LAYER
        self.gradcam_method = gradcam_method or DEFAULT_METHOD
        GradCAM(self.model, self.gradcam_layer, self.gradcam_method)
        self.classes: list[str] = list(model.class_names)
        self.spec = model.preprocess
        self.threshold = model.threshold  # multi-label: one per finding
        self.multilabel = bool(getattr(model, "multilabel", False))
        # multi-label Grad-CAM: this finding's map (None: each image's most probable finding)
        self.gradcam_finding: str | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device=None,
        gradcam_layer=None,
        gradcam_method=None,
        name: str = "ckpt_path",
    ) -> Predictor:
        """``name``: how the user gave ``path`` (``--ckpt`` on a command line), for messages."""
        return cls(load_model(path, name), device, gradcam_layer, gradcam_method)

    @torch.inference_mode()
    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        """Preprocessed uint8 squares (N, S, S) -> class probabilities (N, K)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(self.device)
        logits = self.model(self.model.to_network_input(x))
        logits = logits.float()
        return (logits.sigmoid() if self.multilabel else logits.softmax(1)).cpu().numpy()

    def gradcam(
        self,
        images: np.ndarray,
        labels: list[str],
        layer: str | None = None,
        method: str | None = None,
    ) -> np.ndarray:
        """Class activation maps (N, S, S) in [0, 1] of each image's given class. ``layer``:
        ``last``/``stride32``, ``previous``/``stride16``, ``stride8`` or a module path;
        ``method``: gradcam, gradcam++, hirescam, layercam (inference/gradcam.py). Both default
        to the predictor's settings (unless set: Grad-CAM++ on stride8)."""
        from cxrlab.inference.gradcam import GradCAM

        x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(self.device)
        idx = [self.classes.index(lab) for lab in labels]
        cam = GradCAM(self.model, layer or self.gradcam_layer, method or self.gradcam_method)
        return cam(self.model.to_network_input(x), idx)

    def gradcam_targets(self, labels: list[str], probs: np.ndarray) -> list[str]:
        """The class whose map each Grad-CAM shows: the predicted one; multi-label: the chosen
        finding (``gradcam_finding``), else each image's most probable finding."""
        if not self.multilabel:
            return list(labels)
        if self.gradcam_finding is not None:
            return [self.gradcam_finding] * len(labels)
        return [self.classes[int(i)] for i in probs.argmax(1)]

    def gradcam_overlays(self, images: np.ndarray, labels: list[str]) -> list[np.ndarray]:
        """RGB overlays of each image's Grad-CAM heatmap (predicted class), network size."""
        from cxrlab.inference.gradcam import overlay

        return [overlay(img, heat) for img, heat in zip(images, self.gradcam(images, labels))]

    def write_gradcams(
        self, names: list[str], images, labels, probs: np.ndarray, out_dir: Path
    ) -> list[str]:
        """``<name>_gradcam.png`` overlays of the predicted class's heatmap in ``out_dir``,
        drawn at ``GRADCAM_SIZE`` px (the network input is often 96-224 px) with the class,
        its probability and the threshold written on them. ``names``: unique per input
        (``gradcam_names``)."""
        import cv2

        from cxrlab.inference.gradcam import overlay

        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        labels = self.gradcam_targets(labels, probs)
        heats = self.gradcam(images, labels)
        for name, img, heat, lab, pr in zip(names, images, heats, labels, probs):
            size = max(GRADCAM_SIZE, img.shape[0])
            big = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
            heat = cv2.resize(heat.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
            rgb = overlay(big, heat)
            if self.multilabel:
                k = self.classes.index(lab)
                t = f", threshold {self.threshold[k]:.3f}" if self.threshold else ""
                text = f"{lab}: p={float(pr[k]):.3f}{t}"
            elif len(self.classes) == 2 and self.threshold is not None:
                # the threshold is on the positive class's probability: show that one
                pos = self.classes[1]
                text = f"{lab}: p({pos})={float(pr[1]):.3f}, threshold {self.threshold:.3f}"
            else:
                text = f"{lab}: p={float(pr[self.classes.index(lab)]):.3f}"
            banner = np.zeros((36, size, 3), np.uint8)
            cv2.putText(banner, text, (8, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2,
                        cv2.LINE_AA)  # fmt: skip
            target = out_dir / f"{name}_gradcam.png"
            cv2.imwrite(str(target), cv2.cvtColor(np.vstack([banner, rgb]), cv2.COLOR_RGB2BGR))
            written.append(str(target))
        return written

    def positive_findings(self, probs: np.ndarray) -> list[list[str]]:
        """Multi-label: each image's findings whose probability reaches their threshold."""
        t = np.asarray(self.threshold if self.threshold is not None else [0.5] * len(self.classes))
        return [[c for c, hit in zip(self.classes, row) if hit] for row in probs >= t]

    def label(self, probs: np.ndarray) -> list[str]:
        """Binary: positive when its probability reaches the stored threshold; multi-label:
        the positive findings joined by ``|`` (empty: none); else argmax."""
        if self.multilabel:
            return ["|".join(f) for f in self.positive_findings(probs)]
        if len(self.classes) == 2 and self.threshold is not None:
            return [self.classes[int(p >= self.threshold)] for p in probs[:, 1]]
        return [self.classes[i] for i in probs.argmax(1)]

    def predict_files(
        self,
        paths: Iterable[str | Path],
        batch_size: int = 32,
        progress: bool = True,
        gradcam_dir: str | Path | None = None,
    ) -> pd.DataFrame:
        """One row per file: probabilities, label and threshold, or the reason it failed.

        ``gradcam_dir``: also write a Grad-CAM overlay per image (column ``gradcam``).
        """
        paths = [str(p) for p in paths]
        rows: list[dict] = []
        batch: list[tuple[str, np.ndarray]] = []
        names = gradcam_names(paths) if gradcam_dir is not None else {}

        def flush():
            if batch:
                images = np.stack([a for _, a in batch])
                probs = self.predict_arrays(images)
                labels = self.label(probs)
                cams = [""] * len(batch)
                if gradcam_dir is not None:
                    cams = self.write_gradcams(
                        [names[p] for p, _ in batch], images, labels, probs, Path(gradcam_dir)
                    )
                for (p, _), pr, lab, cam in zip(batch, probs, labels, cams):
                    rows.append(
                        {
                            "path": p,
                            **{f"prob_{c}": float(v) for c, v in zip(self.classes, pr)},
                            "prediction": lab,
                            "threshold": self.threshold,
                            "error": "",
                            **({"gradcam": cam} if gradcam_dir is not None else {}),
                        }
                    )
                batch.clear()

        for p in track(paths, total=len(paths), description="predict", enabled=progress):
            try:
                batch.append((p, load_preprocessed(p, self.spec)))
            except UnreadableImageError as e:
                log.warning("Skipping %s", e)
                rows.append({"path": p, "error": e.reason})
            if len(batch) >= batch_size:
                flush()
        flush()
        columns = ["path", *[f"prob_{c}" for c in self.classes], "prediction", "threshold", "error"]
        if gradcam_dir is not None:
            columns.append("gradcam")
        order = {p: i for i, p in enumerate(paths)}
        df = pd.DataFrame(rows, columns=columns)
        return df.sort_values("path", key=lambda s: s.map(order)).reset_index(drop=True)


GRADCAM_SIZE = 512  # px: overlays a person reads, whatever the network's input size


def gradcam_names(paths: list[str]) -> dict[str, str]:
    """A file-name stem per input, unique among ``paths``: the input's own stem where no other
    input shares it, else its path below the folder common to the inputs sharing it
    (``a/img.jpeg`` and ``b/img.jpeg`` -> ``a__img.jpeg``, ``b__img.jpeg``): DICOM exports
    reuse names often."""
    import os
    from collections import defaultdict

    by_stem = defaultdict(list)
    for p in dict.fromkeys(paths):
        by_stem[Path(p).stem].append(p)
    out = {}
    for stem, group in by_stem.items():
        if len(group) == 1:
            out[group[0]] = stem
            continue
        absolute = [os.path.abspath(p) for p in group]
        common = os.path.commonpath(absolute)
        for p, a in zip(group, absolute):
            out[p] = os.path.relpath(a, common).replace(os.sep, "__")
    return out


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Files, folders (searched recursively for supported images) and glob patterns."""
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            # by suffix, and DICOM by content (exports are often named by UID, no suffix)
            out += [str(f) for f in scan_images(p)[0]]
        elif p.exists():
            out.append(str(p))
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"{item}: no such file, folder or matching pattern")
            out += matches
    return out


def add_gradcam_options(parser) -> None:
    """--gradcam-layer and --gradcam-method, shared by predict.py and serve.py."""
    from cxrlab.inference.gradcam import DEFAULT_LAYER, DEFAULT_METHOD, METHODS

    parser.add_argument(
        "--gradcam-layer",
        default=DEFAULT_LAYER,
        help=f"the stage the heatmap is read from: {DEFAULT_LAYER} (default; 1/8 of the input "
        "size), stride16 = previous, stride32 = last (the classic, coarsest), or a module path "
        "(docs/serving.md measures which points at lesions)",
    )
    parser.add_argument(
        "--gradcam-method",
        default=DEFAULT_METHOD,
        choices=METHODS,
        help=f"how activations and gradients are combined (default {DEFAULT_METHOD}; the "
        "classic: --gradcam-layer last --gradcam-method gradcam)",
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="Predict chest X-ray classes with a cxrlab checkpoint."
    )
    parser.add_argument("inputs", nargs="+", help="files, folders or glob patterns")
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by train.py")
    parser.add_argument(
        "--out",
        default="predictions.csv",
        help="a .csv or .json file (default: predictions.csv in the current folder)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: auto)")
    parser.add_argument(
        "--gradcam", default=None, metavar="DIR", help="also write Grad-CAM overlays here"
    )
    parser.add_argument(
        "--gradcam-finding",
        default=None,
        help="multi-label models: the finding whose map to draw (default: each image's most "
        "probable finding)",
    )
    add_gradcam_options(parser)
    parser.epilog = (
        "Exit status: 0 when every file was predicted or some were (the others are listed "
        "with their reason), 1 when none could be read, 2 for a wrong argument."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        inputs = expand_inputs(args.inputs)
        predictor = Predictor.from_checkpoint(
            args.ckpt, args.device, args.gradcam_layer, args.gradcam_method, name="--ckpt"
        )
    except (UserError, FileNotFoundError) as e:
        parser.exit(EXIT_USER_ERROR, f"Error: {e}\n")
    if args.gradcam_finding is not None:
        if not predictor.multilabel or args.gradcam_finding not in predictor.classes:
            parser.exit(
                EXIT_USER_ERROR,
                f"Error: --gradcam-finding {args.gradcam_finding!r}: "
                + (f"use one of {predictor.classes}" if predictor.multilabel
                   else "only for multi-label models; the map is of the predicted class")
                + "\n",
            )  # fmt: skip
        predictor.gradcam_finding = args.gradcam_finding
    df = predictor.predict_files(inputs, args.batch_size, gradcam_dir=args.gradcam)
    out = Path(args.out)
    if out.suffix.lower() == ".json":
        out.write_text(df.to_json(orient="records", indent=2))
    else:
        df.to_csv(out, index=False)
    failed = df[df["error"].fillna("") != ""]
    log.info(
        "Predicted %d files into %s; %d could not be read%s",
        len(df) - len(failed),
        out,
        len(failed),
        "".join(f"\n  {r.path}: {r.error}" for r in failed.itertuples()),
    )
    if len(failed) == len(df):
        log.error("Nothing was predicted: none of the %d inputs could be read", len(df))
        return 1
    return 0
