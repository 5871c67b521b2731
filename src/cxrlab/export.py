"""Export a checkpoint to ONNX (dynamic batch) or TorchScript: ``python -m cxrlab.export``.

    python -m cxrlab.export --ckpt best.ckpt --format onnx --out model.onnx
    python -m cxrlab.export --ckpt best.ckpt --format torchscript --out model.pt

The exported graph takes what the cache and the Predictor produce, preprocessed images
``(N, 1, S, S)`` as floats in [0, 1] (uint8 / 255), and returns class probabilities
``(N, K)``: the backbone's input normalization (xrv range or ImageNet mean/std, channel
replication) is inside it. Reading files and the crop/resize stay outside, as in training
(``cxrlab.data.preprocess.load_preprocessed``); ``<out>.json`` next to the model says how
(preprocessing, classes, threshold, input spec). ``--check`` compares the export with the
PyTorch model on random inputs and prints the largest absolute difference.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxrlab.evaluation.run import load_model

log = logging.getLogger(__name__)


class Exportable(nn.Module):
    """[0, 1] images (N, 1, S, S) -> probabilities, with the model's own normalization."""

    def __init__(self, model):
        super().__init__()
        self.net = model.net
        self.spec = model.input_spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.spec.normalize(x)).softmax(1)


def sidecar(model) -> dict:
    return {
        "input": "float32 (N, 1, S, S) in [0, 1]: cxrlab.data.preprocess.load_preprocessed / 255",
        "output": "float32 (N, K) class probabilities",
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
                output_names=["probabilities"],
                dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
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


def max_abs_difference(
    ckpt, exported: str | Path, fmt: str, batch: int = 3, seed: int = 0
) -> float:
    """Largest |export - PyTorch| over a random batch (a batch size the export never saw)."""
    model = load_model(ckpt).eval()
    size = int(model.hparams["preprocess"]["size"])
    x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = Exportable(model).eval()(x).numpy()
        if fmt == "onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
            got = sess.run(["probabilities"], {"image": x.numpy()})[0]
        else:
            got = torch.jit.load(str(exported))(x).numpy()
    return float(np.abs(got - ref).max())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Export a cxrlab checkpoint (ONNX or TorchScript)")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", required=True)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--check", action="store_true", help="compare with PyTorch on random inputs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = export(args.ckpt, args.out, args.format, args.opset)
    if args.check:
        diff = max_abs_difference(args.ckpt, out, args.format)
        log.info("Largest absolute difference from PyTorch (3 random images): %.2e", diff)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
