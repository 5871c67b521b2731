"""Export a checkpoint to ONNX (dynamic batch) or TorchScript: ``python -m cxrlab.export``.

    python -m cxrlab.export --ckpt best.ckpt --format onnx --out model.onnx
    python -m cxrlab.export --ckpt best.ckpt --format torchscript --out model.pt

The exported graph takes what the cache and the Predictor produce, preprocessed images
``(N, 1, S, S)`` as floats in [0, 1] (uint8 / 255), and returns class probabilities
``(N, K)``: the backbone's input normalization (xrv range or ImageNet mean/std, channel
replication) is inside it. Reading files and the crop/resize stay outside, as in training
(``cxrlab.data.preprocess.load_preprocessed``); ``<out>.json`` next to the model says how
(preprocessing, classes, threshold, input spec). Outputs: ``probabilities`` and ``logits``.

``--check`` runs the export and the PyTorch model on real preprocessed radiographs (the files
given with ``--check-images``, else phantom radiographs rendered in memory) and compares their
logits: probabilities of a confident model sit at 0 or 1, where any export would agree.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrlab.checkpoints import load_model

log = logging.getLogger(__name__)


class Exportable(nn.Module):
    """[0, 1] images (N, 1, S, S) -> (probabilities, logits), with the model's own
    normalization."""

    def __init__(self, model):
        super().__init__()
        self.net = model.net
        self.spec = model.input_spec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(self.spec.normalize(x))
        return logits.softmax(1), logits


def sidecar(model) -> dict:
    return {
        "input": "float32 (N, 1, S, S) in [0, 1]: cxrlab.data.preprocess.load_preprocessed / 255",
        "output": "probabilities: float32 (N, K); logits: float32 (N, K), before the softmax",
        "classes": list(model.class_names),
        "threshold": model.threshold,
        "threshold_policy": model.threshold_policy,
        "preprocess": dict(model.hparams["preprocess"]),
        "input_spec": dict(model.hparams["input_spec"]),
        "backbone": model.hparams["backbone"],
    }


def export(ckpt: str | Path, out: str | Path, fmt: str = "onnx", opset: int = 17) -> Path:
    model = load_model(ckpt).eval()
    wrapper = Exportable(model).eval()
    size = int(model.hparams["preprocess"]["size"])
    dummy = torch.rand(2, 1, size, size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if fmt == "onnx":
            # the TorchScript-based exporter: no onnxscript needed, dynamic batch axis
            torch.onnx.export(
                wrapper,
                (dummy,),
                str(out),
                input_names=["image"],
                output_names=["probabilities", "logits"],
                dynamic_axes={
                    "image": {0: "batch"},
                    "probabilities": {0: "batch"},
                    "logits": {0: "batch"},
                },
                opset_version=opset,
                dynamo=False,
            )
        elif fmt == "torchscript":
            torch.jit.trace(wrapper, dummy).save(str(out))
        else:
            raise ValueError(f"--format {fmt!r}: use onnx or torchscript")
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(sidecar(model), indent=2))
    log.info("Exported %s to %s (%s)", ckpt, out, fmt)
    return out


def check_images(model, paths: list[str] | None = None, count: int = 8) -> np.ndarray:
    """Real preprocessed radiographs as the export's input, (N, 1, S, S) floats in [0, 1]:
    ``paths`` (files, folders, globs) through the training read/preprocess path, or ``count``
    phantom radiographs (normal and pneumonia) rendered in memory."""
    from cxrlab.data.preprocess import load_preprocessed, preprocess_array

    spec = model.preprocess
    if paths:
        from cxrlab.inference.predictor import expand_inputs

        images = [load_preprocessed(p, spec) for p in expand_inputs(paths)]
    else:
        from cxrlab.data import phantom

        rng = np.random.default_rng(0)
        cfg = phantom.PhantomConfig()
        findings = ["normal", "bacteria", "virus", "normal"]
        images = []
        for i in range(count):
            anat = phantom.sample_anatomy(rng, findings[i % len(findings)], cfg)
            img, _ = phantom.render(anat, image_seed=i, width=384)
            images.append(preprocess_array(img, 255.0, spec))
    return np.stack(images)[:, None].astype(np.float32) / 255.0


def compare(ckpt, exported: str | Path, fmt: str, images: np.ndarray) -> dict:
    """Largest |export - PyTorch| of logits and probabilities on ``images``, and how many
    images the model is not saturated on (top probability below 0.999)."""
    model = load_model(ckpt).eval()
    x = torch.from_numpy(images)
    with torch.no_grad():
        ref_p, ref_l = (t.numpy() for t in Exportable(model).eval()(x))
        if fmt == "onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
            got_p, got_l = sess.run(["probabilities", "logits"], {"image": images})
        else:
            got_p, got_l = (t.numpy() for t in torch.jit.load(str(exported))(x))
    return {
        "images": int(len(images)),
        "logits": float(np.abs(got_l - ref_l).max()),
        "probabilities": float(np.abs(got_p - ref_p).max()),
        "unsaturated": int((ref_p.max(1) < 0.999).sum()),
    }


def max_abs_difference(ckpt, exported: str | Path, fmt: str, paths=None, count: int = 8) -> float:
    """Largest |export - PyTorch| of the logits on real radiographs (see ``check_images``)."""
    images = check_images(load_model(ckpt), paths, count)
    return compare(ckpt, exported, fmt, images)["logits"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Export a cxrlab checkpoint (ONNX or TorchScript)")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", required=True)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--check",
        action="store_true",
        help="compare the export's logits with PyTorch's on real radiographs; exit 1 if they "
        "differ by more than --tolerance",
    )
    p.add_argument(
        "--check-images",
        nargs="+",
        metavar="PATH",
        help="files, folders or globs to check on (default: 8 phantom radiographs)",
    )
    p.add_argument("--tolerance", type=float, default=1e-3, help="largest logit difference")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = export(args.ckpt, args.out, args.format, args.opset)
    if args.check:
        images = check_images(load_model(args.ckpt), args.check_images)
        d = compare(args.ckpt, out, args.format, images)
        log.info(
            "Largest absolute difference from PyTorch on %d %s: logits %.2e, probabilities "
            "%.2e (%d of them not saturated, top probability < 0.999)",
            d["images"],
            "given images" if args.check_images else "phantom radiographs",
            d["logits"],
            d["probabilities"],
            d["unsaturated"],
        )
        if d["logits"] > args.tolerance:
            log.error("The export differs from PyTorch by more than --tolerance %g", args.tolerance)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
