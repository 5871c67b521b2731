"""Transfer-learning controls: what trains when, at which learning rate, with which decay.

Policies (``model.finetune.policy``):

- ``full``: everything trains from the first step (backbone at ``backbone_lr_scale`` x lr).
- ``head``: the backbone is frozen for the whole run (no gradients, not in the optimizer) and
  its BatchNorm layers stay in eval mode, i.e. they keep the pretrained running statistics
  instead of drifting to the new data's; only the classification head trains.
- ``staged``: head only for ``unfreeze_at_epoch`` epochs, then the last ``unfreeze_blocks``
  backbone blocks (or ``all``) train too, at ``backbone_lr_scale`` x lr.

Each backbone names five blocks in the registry (stem, then the stages ending at strides
8, 16, 32 and the last one), so "the last K blocks" means the same depth for DenseNet,
EfficientNet and ResNet.

Why not Lightning's ``BackboneFinetuning``: its frozen BatchNorm layers switch to batch
statistics in training (``track_running_stats=False``) while evaluation uses the running ones,
and the parameter groups it adds on unfreezing are unknown to an already-built LR scheduler and
to an already-built DDP reducer (whose gradient sync covers only parameters that required grad
at construction). Here every parameter that may ever train is in the optimizer from the start,
with its own group and learning rate. While a block is frozen in ``staged``, in one process its
parameters stop requiring gradients (autograd skips its backward pass: the head phase costs
what ``head`` costs); under DDP, whose reducer waits for a gradient of every parameter that
required one when the model was wrapped, its gradients are computed and dropped after the
backward pass instead (identically on every rank). Either way the optimizer skips it (no
update, no weight decay, no moment estimates).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

log = logging.getLogger(__name__)

POLICIES = ("full", "head", "staged")


@dataclass(frozen=True)
class FinetuneConfig:
    policy: str = "full"
    # staged: epochs of head-only training before the backbone (or part of it) unfreezes
    unfreeze_at_epoch: int = 2
    # staged: how many of the backbone's last blocks unfreeze (1-5) or "all"
    unfreeze_blocks: int | str = "all"
    # backbone learning rate = model.optimizer.lr x this (0.1 is usual for pretrained weights)
    backbone_lr_scale: float = 1.0
    # frozen blocks keep their BatchNorm running statistics (eval mode)
    freeze_bn: bool = True
    # no weight decay on normalization weights and biases (they are not "weights" to shrink)
    no_decay_norm_bias: bool = True

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"model.finetune.policy={self.policy!r}: use one of {list(POLICIES)}")
        if int(self.unfreeze_at_epoch) < 0:
            raise ValueError(
                f"model.finetune.unfreeze_at_epoch={self.unfreeze_at_epoch}: must be >= 0"
            )
        k = self.unfreeze_blocks
        if not (k == "all" or (isinstance(k, int) and not isinstance(k, bool) and k >= 1)):
            raise ValueError(
                f"model.finetune.unfreeze_blocks={k!r}: use a number of blocks (>= 1) or 'all'"
            )
        if float(self.backbone_lr_scale) < 0:
            raise ValueError(
                f"model.finetune.backbone_lr_scale={self.backbone_lr_scale}: must be >= 0"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_blocks(net: nn.Module, block_names) -> list[list[nn.Module]]:
    """The backbone's blocks as module lists (names are paths inside the Classifier)."""
    return [[net.get_submodule(n) for n in names] for names in block_names]


def _params(modules) -> list[nn.Parameter]:
    seen, out = set(), []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def is_no_decay(module: nn.Module, name: str, p: nn.Parameter) -> bool:
    norm = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
    return isinstance(module, norm) or name.endswith("bias") or p.ndim <= 1


def split_decay(modules, no_decay_norm_bias: bool) -> tuple[list, list]:
    decay, no_decay, seen = [], [], set()
    for top in modules:
        for m in top.modules():
            for name, p in m.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                (no_decay if no_decay_norm_bias and is_no_decay(m, name, p) else decay).append(p)
    return decay, no_decay


def param_groups(net: nn.Module, cfg: FinetuneConfig, lr: float, weight_decay: float) -> list[dict]:
    """Named optimizer groups: head and backbone, each split into decay / no-decay.

    ``head`` policy: the backbone is not in the optimizer at all.
    """
    groups = []
    parts = [("head", [net.head], lr)]
    if cfg.policy != "head":
        parts.append(("backbone", [net.features], lr * float(cfg.backbone_lr_scale)))
    for name, modules, group_lr in parts:
        decay, no_decay = split_decay(modules, cfg.no_decay_norm_bias)
        if decay:
            groups.append(
                {"name": name, "params": decay, "lr": group_lr, "weight_decay": weight_decay}
            )
        if no_decay:
            groups.append(
                {
                    "name": f"{name}_no_decay",
                    "params": no_decay,
                    "lr": group_lr,
                    "weight_decay": 0.0,
                }
            )
    return groups


def load_backbone_weights(net: nn.Module, path: str, backbone: str) -> int:
    """Copy the trunk (``features``) of another model into ``net``; the head stays new.

    ``path``: a cxrlab checkpoint (e.g. a model trained on another dataset or task) or a
    plain state dict of the same backbone. Returns the number of tensors loaded.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"model.init_from={path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        source = (state.get("hyper_parameters") or {}).get("backbone")
        if source and source != backbone:
            raise ValueError(
                f"model.init_from={path} holds a {source} backbone, not {backbone}: "
                f"use model={source} or another checkpoint"
            )
        state = {k.removeprefix("net."): v for k, v in state["state_dict"].items()}
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    own = {k for k in net.state_dict() if k.startswith("features.")}
    if set(features) != own:
        missing, extra = sorted(own - set(features))[:3], sorted(set(features) - own)[:3]
        raise ValueError(
            f"model.init_from={path} does not match the {backbone} trunk "
            f"(missing {missing}..., unexpected {extra}...)"
        )
    net.load_state_dict(features, strict=False)
    log.info("Backbone initialized from %s (%d tensors; new head)", path, len(features))
    return len(features)


class Finetuner(pl.Callback):
    """Applies the policy's stage every epoch (so resuming mid-run lands in the right stage)."""

    def __init__(self, cfg: FinetuneConfig, blocks: list[list[nn.Module]]):
        self.cfg = cfg
        self.blocks = blocks
        self.frozen_params: list[nn.Parameter] = []
        self.frozen_bn: list[nn.Module] = []
        self.stage: str | None = None
        # one process: frozen blocks stop requiring gradients; under DDP they cannot (see above)
        self.toggle_requires_grad = True

    def frozen_blocks(self, epoch: int) -> list[list[nn.Module]]:
        if self.cfg.policy == "full":
            return []
        if self.cfg.policy == "head" or epoch < int(self.cfg.unfreeze_at_epoch):
            return self.blocks
        k = self.cfg.unfreeze_blocks
        return [] if k == "all" else self.blocks[: max(0, len(self.blocks) - int(k))]

    def on_fit_start(self, trainer, pl_module) -> None:
        # (policy head: CXRClassifier froze the backbone at construction: no gradients at all)
        # the strategy has wrapped the model by now
        ddp = isinstance(trainer.strategy.model, nn.parallel.DistributedDataParallel)
        self.toggle_requires_grad = not ddp
        if ddp and self.cfg.policy == "staged":
            log.info("Fine-tuning under DDP: frozen blocks' gradients are computed, then dropped")
        self._apply(trainer.current_epoch)

    def _apply(self, epoch: int) -> None:
        frozen = [m for b in self.frozen_blocks(epoch) for m in b]
        self.frozen_params = _params(frozen)
        self.frozen_bn = (
            [
                m
                for top in frozen
                for m in top.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)
            ]
            if self.cfg.freeze_bn
            else []
        )
        if self.toggle_requires_grad and self.cfg.policy == "staged":
            frozen_ids = {id(p) for p in self.frozen_params}
            for p in _params(m for b in self.blocks for m in b):
                p.requires_grad_(id(p) not in frozen_ids)
        n_frozen = len(self.frozen_blocks(epoch))
        stage = f"{len(self.blocks) - n_frozen} of {len(self.blocks)} backbone blocks train"
        if stage != self.stage:
            log.info("Fine-tuning (%s) from epoch %d: %s", self.cfg.policy, epoch, stage)
            self.stage = stage

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._apply(trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Lightning puts the whole model back in train mode around validation
        for m in self.frozen_bn:
            m.eval()

    def on_after_backward(self, trainer, pl_module) -> None:
        for p in self.frozen_params:
            p.grad = None
