"""Backbone registry: name -> network + the input contract its weights were trained with.

Every entry states its ``InputSpec`` (channels and normalization), in the manner of timm's
pretrained configs, so nobody guesses: the module normalizes with it during training, and the
predictor reads it back from the checkpoint. Normalization lives only here.

Pretrained weights are never downloaded at run time by cxrlab's own choice: ``pretrained=auto``
uses a weights file when it is already in the library's cache folder and otherwise trains from
scratch with a loud warning; ``pretrained=true`` fails with the file name and where to put it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

XRV_RANGE = 1024.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(FileNotFoundError):
    """Pretrained weights were required but are not on disk (and nothing is downloaded)."""


@dataclass(frozen=True)
class InputSpec:
    """What the network expects: channels and how [0, 1] grayscale maps to its input."""

    channels: int
    normalization: str  # "xrv": [-1024, 1024] one channel; "imagenet": mean/std, 3 channels

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) floats in [0, 1] -> the network's input."""
        if self.normalization == "xrv":
            return (x * 2.0 - 1.0) * XRV_RANGE
        if self.normalization == "imagenet":
            mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
            return (x.expand(-1, 3, -1, -1) - mean) / std
        raise ValueError(f"unknown normalization {self.normalization!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class Classifier(nn.Module):
    """features (conv trunk) -> global average pool -> dropout -> linear head."""

    def __init__(
        self,
        features: nn.Module,
        num_features: int,
        num_classes: int,
        dropout: float,
        final_relu: bool = False,
    ):
        super().__init__()
        self.features = features
        self.final_relu = final_relu  # DenseNet's trunk ends in a BatchNorm: ReLU before pooling
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return torch.relu(f) if self.final_relu else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.pool(self.forward_features(x)).flatten(1)
        return self.head(self.dropout(f))


# --------------------------------------------------------------------------------------------
# weights files


def xrv_weights_file(weights: str) -> Path:
    import torchxrayvision as xrv

    if weights not in xrv.models.model_urls:
        choices = [k for k in xrv.models.model_urls if k.startswith("densenet")]
        raise ValueError(f"model.weights={weights!r}: use one of {choices}")
    url = xrv.models.model_urls[weights]["weights_url"]
    return Path(os.path.expanduser(xrv.utils.get_cache_dir())) / os.path.basename(url)


def torchvision_weights_file(weights_enum) -> Path:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return hub / os.path.basename(weights_enum.url)


def _resolve_pretrained(pretrained, path: Path, url: str, name: str) -> bool:
    """Decide whether to load weights: True/False, or raise for pretrained=true without file."""
    mode = str(pretrained).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"model.pretrained={pretrained!r}: use auto, true or false")
    if mode == "false":
        return False
    if path.is_file():
        return True
    msg = (
        f"Pretrained weights for {name} are not on disk: {path}. cxrlab never downloads at run "
        f"time; fetch them once with `wget {url} -O {path}` (or copy the file there)."
    )
    if mode == "true":
        raise WeightsUnavailableError(msg)
    log.warning("%s TRAINING %s FROM SCRATCH (model.pretrained=auto).", msg, name.upper())
    return False


# --------------------------------------------------------------------------------------------
# builders


def _densenet121_xrv(num_classes: int, dropout: float, pretrained, weights: str | None):
    import torchxrayvision as xrv

    weights = weights or "densenet121-res224-all"
    path = xrv_weights_file(weights)
    url = xrv.models.model_urls[weights]["weights_url"]
    if _resolve_pretrained(pretrained, path, url, f"densenet121_xrv ({weights})"):
        net = xrv.models.DenseNet(weights=weights, cache_dir=str(path.parent))
        log.info("Loaded torchxrayvision weights %s from %s", weights, path)
    else:
        net = xrv.models.DenseNet(weights=None)
    # Only the trunk is kept: xrv's forward would resize every input to 224 px and apply its
    # op thresholds to its own 18 outputs; cxrlab decides the resolution and the head.
    return Classifier(
        net.features, net.classifier.in_features, num_classes, dropout, final_relu=True
    )


def _torchvision(arch: str):
    def build(num_classes: int, dropout: float, pretrained, weights: str | None):
        import torchvision

        enum = torchvision.models.get_model_weights(arch)
        wenum = enum[weights] if weights else enum.DEFAULT
        use = _resolve_pretrained(
            pretrained, torchvision_weights_file(wenum), wenum.url, f"{arch} ({wenum.name})"
        )
        net = torchvision.models.get_model(arch, weights=wenum if use else None)
        if use:
            log.info("Loaded torchvision weights %s.%s", arch, wenum.name)
        if arch.startswith("resnet"):
            n = net.fc.in_features
            features = nn.Sequential(*list(net.children())[:-2])
            return Classifier(features, n, num_classes, dropout)
        if arch.startswith("densenet"):
            return Classifier(
                net.features, net.classifier.in_features, num_classes, dropout, final_relu=True
            )
        if arch.startswith("efficientnet"):
            return Classifier(net.features, net.classifier[-1].in_features, num_classes, dropout)
        raise AssertionError(arch)

    return build


@dataclass(frozen=True)
class BackboneEntry:
    build: object
    input_spec: InputSpec
    # output stride -> module path of that stage's last feature map (before it is pooled):
    # Grad-CAM's target layers (inference/gradcam.py); 32 is the last stage
    cam_layers: dict[int, str]
    # five blocks, input to output: the stem, then four stages of decreasing resolution (the
    # last is the deepest); module paths inside the Classifier (model.finetune.unfreeze_blocks)
    blocks: tuple[tuple[str, ...], ...] = ()


XRV_SPEC = InputSpec(channels=1, normalization="xrv")
IMAGENET_SPEC = InputSpec(channels=3, normalization="imagenet")


def _paths(*groups: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(f"features.{n}" for n in g.split()) for g in groups)


DENSENET_BLOCKS = _paths(
    "conv0 norm0 relu0 pool0",
    "denseblock1 transition1",
    "denseblock2 transition2",
    "denseblock3 transition3",
    "denseblock4 norm5",
)
RESNET_BLOCKS = _paths("0 1 2 3", "4", "5", "6", "7")
EFFICIENTNET_B0_BLOCKS = _paths("0 1", "2", "3", "4 5", "6 7 8")
EFFICIENTNET_V2_BLOCKS = _paths("0 1", "2", "3", "4 5", "6 7")
DENSENET_CAM = {8: "features.denseblock2", 16: "features.denseblock3", 32: "features.denseblock4"}
RESNET_CAM = {8: "features.5", 16: "features.6", 32: "features.7"}

BACKBONES: dict[str, BackboneEntry] = {
    "densenet121_xrv": BackboneEntry(_densenet121_xrv, XRV_SPEC, DENSENET_CAM, DENSENET_BLOCKS),
    "densenet121": BackboneEntry(
        _torchvision("densenet121"), IMAGENET_SPEC, DENSENET_CAM, DENSENET_BLOCKS
    ),
    "efficientnet_b0": BackboneEntry(
        _torchvision("efficientnet_b0"),
        IMAGENET_SPEC,
        {8: "features.3", 16: "features.5", 32: "features.8"},
        EFFICIENTNET_B0_BLOCKS,
    ),
    "efficientnet_v2_s": BackboneEntry(
        _torchvision("efficientnet_v2_s"),
        IMAGENET_SPEC,
        {8: "features.3", 16: "features.5", 32: "features.7"},
        EFFICIENTNET_V2_BLOCKS,
    ),
    "resnet18": BackboneEntry(_torchvision("resnet18"), IMAGENET_SPEC, RESNET_CAM, RESNET_BLOCKS),
    "resnet50": BackboneEntry(_torchvision("resnet50"), IMAGENET_SPEC, RESNET_CAM, RESNET_BLOCKS),
}


def check_backbone(name: str) -> BackboneEntry:
    if name not in BACKBONES:
        raise ValueError(f"model.backbone={name!r} is not known: use one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(
    name: str, num_classes: int, dropout: float = 0.0, pretrained="auto", weights: str | None = None
) -> tuple[Classifier, InputSpec]:
    entry = check_backbone(name)
    return entry.build(num_classes, dropout, pretrained, weights), entry.input_spec
