"""Backbone registry: name -> network + the input contract its weights were trained with.

Every entry states its ``InputSpec`` (channels and normalization), in the manner of timm's
pretrained configs, so nobody guesses: the module normalizes with it during training, and the
predictor reads it back from the checkpoint. Normalization lives only here.

Pretrained weights (``cxrlab.models.weights``) are fetched on first use into the library's own
cache: ``pretrained=true`` stops when they cannot be had, naming the URL and where to place the
file; ``auto`` then trains from scratch, loudly; ``false`` never looks. Every builder returns
the weights' provenance with the network, so a run always says what it started from.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

from cxrlab.errors import ConfigError, UserError, check_choice
from cxrlab.models.weights import (  # noqa: F401  (WeightsUnavailableError: re-exported)
    WeightsSource,
    WeightsUnavailableError,
    resolve,
    torchvision_source,
    xrv_source,
)

log = logging.getLogger(__name__)

XRV_RANGE = 1024.0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
# builders


HEADS = ("new", "pretrained_findings")


def finding_key(name: str) -> str:
    """A finding's name for matching, as torchxrayvision relabels datasets by name:
    ``Pleural_Thickening``, ``pleural thickening`` and ``pleural_thickening`` are one."""
    return re.sub(r"\W+", "_", str(name).strip()).strip("_").lower()


def xrv_finding_rows(class_names, pathologies) -> dict[int, int]:
    """{row of our head: row of torchxrayvision's classifier} for the findings both have."""
    index = {finding_key(p): j for j, p in enumerate(pathologies) if p}
    return {i: index[finding_key(c)] for i, c in enumerate(class_names) if finding_key(c) in index}


def _densenet121_xrv(
    num_classes: int,
    dropout: float,
    pretrained,
    weights: str | None,
    class_names=None,
    head: str = "new",
):
    import torchxrayvision as xrv

    source = weights_source("densenet121_xrv", weights)
    path, prov = resolve_weights("densenet121_xrv", weights, pretrained)
    if path is not None:
        net = xrv.models.DenseNet(weights=source.name, cache_dir=str(path.parent))
        log.info("Loaded torchxrayvision weights %s from %s", source.name, path)
    else:
        net = xrv.models.DenseNet(weights=None)
    # Only the trunk is kept: xrv's forward would resize every input to 224 px and apply its
    # op thresholds to its own 18 outputs; cxrlab decides the resolution and the head.
    model = Classifier(
        net.features, net.classifier.in_features, num_classes, dropout, final_relu=True
    )
    if head == "pretrained_findings":
        # the head starts from torchxrayvision's own classifier rows for the findings the
        # dataset shares with it (matched by name), new rows for the rest
        if path is None:
            raise ConfigError(
                "model.head=pretrained_findings starts the head from torchxrayvision's "
                "classifier, so it needs its pretrained weights: model.pretrained=true "
                f"(they could not be had: {prov.get('reason', 'not requested')})"
            )
        pathologies = list(getattr(net, "pathologies", None) or getattr(net, "targets", []))
        rows = xrv_finding_rows(class_names or [], pathologies)
        with torch.no_grad():
            for i, j in rows.items():
                model.head.weight[i] = net.classifier.weight[j]
                model.head.bias[i] = net.classifier.bias[j]
        prov = {**prov, "head_rows": {class_names[i]: pathologies[j] for i, j in rows.items()}}
        new = [c for i, c in enumerate(class_names) if i not in rows]
        log.info("Head rows from torchxrayvision's classifier: %s; new rows: %s",
                 prov["head_rows"] or "none", new or "none")  # fmt: skip
    return model, prov


def _torchvision(arch: str):
    def build(num_classes: int, dropout: float, pretrained, weights: str | None):
        import torchvision

        source = weights_source(arch, weights)
        # torch.hub checks the file against the SHA-256 prefix in its name; torchvision's own
        # loader then reads it from the hub cache (it renames legacy DenseNet keys itself)
        path, prov = resolve_weights(arch, weights, pretrained)
        wenum = torchvision.models.get_weight(source.name) if path is not None else None
        net = torchvision.models.get_model(arch, weights=wenum)
        if path is not None:
            log.info("Loaded torchvision weights %s from %s", source.name, path)
        if arch.startswith("resnet"):
            n = net.fc.in_features
            features = nn.Sequential(*list(net.children())[:-2])
            return Classifier(features, n, num_classes, dropout), prov
        if arch.startswith("densenet"):
            return Classifier(
                net.features, net.classifier.in_features, num_classes, dropout, final_relu=True
            ), prov
        if arch.startswith("efficientnet"):
            return Classifier(
                net.features, net.classifier[-1].in_features, num_classes, dropout
            ), prov
        raise AssertionError(arch)

    return build


def resolve_weights(backbone: str, weights: str | None, pretrained) -> tuple:
    """(weights file or None, provenance) for a backbone: fetched on first use (see
    ``cxrlab.models.weights.resolve``). torchxrayvision files are checked to hold DenseNet's
    weights after a download; torchvision's are checked by torch.hub against their hash."""
    if str(pretrained).lower() == "false":
        return resolve("false", None)
    source = weights_source(backbone, weights)
    keys = None
    if source.library == "torchxrayvision":
        import torchxrayvision as xrv

        keys = lambda: xrv.models.DenseNet(weights=None).state_dict()  # noqa: E731
    return resolve(pretrained, source, keys)


def weights_source(backbone: str, weights: str | None) -> WeightsSource:
    """Which pretrained file ``model.backbone`` / ``model.weights`` name (not fetched here)."""
    if backbone == "densenet121_xrv":
        return xrv_source(weights or "densenet121-res224-all")
    import torchvision

    enum = torchvision.models.get_model_weights(backbone)
    try:
        return torchvision_source(enum[weights] if weights else enum.DEFAULT)
    except KeyError:
        raise UserError(
            f"model.weights={weights!r}: use one of {[w.name for w in enum]} or null"
        ) from None


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
    check_choice(name, sorted(BACKBONES), "model.backbone")
    return BACKBONES[name]


def build_backbone(
    name: str,
    num_classes: int,
    dropout: float = 0.0,
    pretrained="auto",
    weights: str | None = None,
    class_names=None,
    head: str = "new",
) -> tuple[Classifier, InputSpec, dict]:
    """(network, its input spec, the provenance of its starting weights). ``head``: ``new``,
    or ``pretrained_findings`` (densenet121_xrv: rows of torchxrayvision's classifier for the
    ``class_names`` it knows)."""
    entry = check_backbone(name)
    check_choice(head, HEADS, "model.head")
    if head != "new":
        if name != "densenet121_xrv":
            raise ConfigError(
                f"model.head={head} takes torchxrayvision's classifier rows: use "
                "model=densenet121_xrv (model.backbone=densenet121_xrv)"
            )
        net, prov = entry.build(num_classes, dropout, pretrained, weights,
                                class_names=list(class_names or []), head=head)  # fmt: skip
    else:
        net, prov = entry.build(num_classes, dropout, pretrained, weights)
    return net, entry.input_spec, prov
