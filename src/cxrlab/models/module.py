"""The LightningModule: uint8 batch -> augment (train only) -> normalize -> backbone -> loss.

Everything a predictor needs (backbone name, class names, input spec, preprocessing) is saved in
the checkpoint's hyper-parameters, so a checkpoint alone restores the whole input contract.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pytorch_lightning as pl
import torch
import torchmetrics
from torchmetrics import classification as tmc

from cxrlab.data.augment import AugmentConfig, BatchAugment
from cxrlab.data.preprocess import PreprocessSpec
from cxrlab.errors import ConfigError, check_choice
from cxrlab.models.backbones import BACKBONES, build_backbone, check_backbone
from cxrlab.models.finetune import (
    FinetuneConfig,
    Finetuner,
    load_backbone_weights,
    param_groups,
    resolve_blocks,
)
from cxrlab.models.losses import build_loss, build_multilabel_loss, check_loss
from cxrlab.models.weights import check_mode
from cxrlab.utils.nested import as_settings

log = logging.getLogger(__name__)

# model.optimizer.name -> the optimizer class (its other keys are that class's arguments)
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def _cosine(module, opt, sched: dict) -> dict:
    max_epochs = module.trainer.max_epochs if module.trainer and module.trainer.max_epochs else 10
    s = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=max(1, max_epochs), eta_min=sched.get("eta_min", 0.0)
    )
    return {"scheduler": s, "interval": "epoch"}


def _plateau(module, opt, sched: dict) -> dict:
    s = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt,
        mode=sched.get("mode", "max"),
        factor=sched.get("factor", 0.5),
        patience=sched.get("patience", 2),
    )
    return {"scheduler": s, "monitor": sched.get("monitor", "val/auroc")}


# model.scheduler.name -> Lightning's lr_scheduler entry for an optimizer (none: no scheduler)
SCHEDULERS = {"none": None, "cosine": _cosine, "plateau": _plateau}


def check_settings(model: Mapping) -> None:
    """The rules of the ``model.*`` settings, each naming its key: the classifier's
    constructor runs them, ``cxrlab.config.validate`` runs the same before any work (the
    fine-tuning policy checks itself: FinetuneConfig). Keys are the constructor's arguments."""
    check_backbone(model["backbone"])
    check_mode(model.get("pretrained", "auto"))
    if not 0 <= float(model.get("dropout", 0.0)) < 1:
        raise ConfigError(f"model.dropout={model['dropout']}: use a value in [0, 1)")
    check_loss(model.get("loss") or {})
    optimizer = model.get("optimizer") or {}
    check_choice(optimizer.get("name", "adam"), OPTIMIZERS, "model.optimizer.name")
    if float(optimizer.get("lr", 1e-3)) <= 0:
        raise ConfigError(f"model.optimizer.lr={optimizer['lr']}: must be > 0")
    scheduler = model.get("scheduler") or {}
    check_choice(scheduler.get("name", "none"), SCHEDULERS, "model.scheduler.name")


def float32_below(t: float) -> float:
    """The largest float32 strictly below ``t``: for float32 probabilities p, ``p > it`` is
    exactly ``p >= t``. cxrlab calls p >= t positive (the report, predictors, the threshold
    policies); torchmetrics calls p > t positive. The threshold is an observed probability, so a
    test image scored exactly t (a duplicate of a validation image) would otherwise count
    differently in Lightning's metrics and in the report."""
    t32 = np.float32(t)
    if float(t32) < t:
        return float(t32)
    # torchmetrics takes thresholds in [0, 1] only: at t = 0 only an exact 0.0 differs
    return max(0.0, float(np.nextafter(t32, np.float32(-np.inf))))


def make_metrics(
    num_classes: int, prefix: str, threshold: float = 0.5
) -> torchmetrics.MetricCollection:
    """Binary: the positive class (index 1) at ``threshold``; multi-class: macro averages."""
    if num_classes == 2:
        t = float(threshold)
        below = float32_below(t)
        m = {
            "auroc": tmc.BinaryAUROC(),
            "accuracy": tmc.BinaryAccuracy(threshold=below),
            "balanced_accuracy": BinaryBalancedAccuracy(threshold=below),
            "f1": tmc.BinaryF1Score(threshold=below),
            "sensitivity": tmc.BinaryRecall(threshold=below),
            "specificity": tmc.BinarySpecificity(threshold=below),
        }
    else:
        k = num_classes
        m = {
            "auroc": tmc.MulticlassAUROC(k, average="macro"),
            "accuracy": tmc.MulticlassAccuracy(k, average="micro"),
            "balanced_accuracy": tmc.MulticlassAccuracy(k, average="macro"),
            "f1": tmc.MulticlassF1Score(k, average="macro"),
            "sensitivity": tmc.MulticlassRecall(k, average="macro"),
            "specificity": tmc.MulticlassSpecificity(k, average="macro"),
        }
    return torchmetrics.MetricCollection(m, prefix=f"{prefix}/")


class BinaryBalancedAccuracy(torchmetrics.Metric):
    """(sensitivity + specificity) / 2 at a threshold (torchmetrics has no binary one);
    positive when p > threshold, as torchmetrics' binary metrics."""

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold
        self.add_state("stats", torch.zeros(4), dist_reduce_fx="sum")

    def update(self, p: torch.Tensor, y: torch.Tensor) -> None:
        pred, y = p > self.threshold, y.bool()
        counts = [(pred & y).sum(), (~pred & ~y).sum(), (pred & ~y).sum(), (~pred & y).sum()]
        self.stats += torch.stack(counts).float()

    def compute(self) -> torch.Tensor:
        tp, tn, fp, fn = self.stats
        return (tp / (tp + fn).clamp(min=1) + tn / (tn + fp).clamp(min=1)) / 2


def _update(
    metrics: torchmetrics.MetricCollection, probs: torch.Tensor, y: torch.Tensor, num_classes: int
) -> None:
    metrics.update(probs[:, 1] if num_classes == 2 else probs, y)


class CXRClassifier(pl.LightningModule):
    def __init__(
        self,
        backbone: str,
        class_names: Sequence[str],
        class_counts: Sequence[int],
        preprocess: PreprocessSpec | Mapping,
        pretrained: str = "auto",
        weights: str | None = None,
        dropout: float = 0.0,
        loss: Mapping | None = None,
        optimizer: Mapping | None = None,
        scheduler: Mapping | None = None,
        augment: AugmentConfig | Mapping | None = None,
        channels_last: bool = False,
        compile: bool = False,
        finetune: FinetuneConfig | Mapping | None = None,
        init_from: str | None = None,
        multilabel: bool = False,
        negative_counts: Sequence[int] | None = None,
        head: str = "new",
    ):
        super().__init__()
        check_settings(
            dict(backbone=backbone, pretrained=pretrained, dropout=dropout, loss=loss,
                 optimizer=optimizer, scheduler=scheduler)
        )  # fmt: skip
        # kept in checkpoints; not sent to loggers: train.py logs the whole run config once
        self.save_hyperparameters(logger=False)
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        # multi-label: one sigmoid output per finding (data.task=multilabel)
        self.multilabel = bool(multilabel)
        if self.num_classes < (1 if self.multilabel else 2):
            raise ValueError(f"need at least two classes, got {self.class_names}")
        if head != "new" and not self.multilabel:
            raise ConfigError(
                f"model.head={head}: torchxrayvision's rows are per-finding sigmoid outputs; "
                "use it with data.task=multilabel"
            )
        self.net, self.input_spec, self.pretrained_weights = build_backbone(
            backbone, self.num_classes, dropout, pretrained, weights,
            class_names=self.class_names, head=head,
        )  # fmt: skip
        self.hparams["input_spec"] = self.input_spec.to_dict()
        if init_from:
            load_backbone_weights(self.net, init_from, backbone)
            from cxrlab.models.weights import from_checkpoint

            self.pretrained_weights = from_checkpoint(init_from)
        self.finetune = as_settings(FinetuneConfig, finetune)
        if self.finetune.policy == "head":
            # frozen before anything wraps the model (DDP syncs only what requires grad then)
            self.net.features.requires_grad_(False)
        loss = dict(loss or {"name": "ce"})
        if self.multilabel:
            self.criterion = build_multilabel_loss(
                loss.pop("name", "bce"), class_counts, negative_counts, **loss
            )
        else:
            self.criterion = build_loss(loss.pop("name", "ce"), class_counts, **loss)
        self.optimizer_cfg = dict(optimizer or {"name": "adam", "lr": 1e-3})
        self.scheduler_cfg = dict(scheduler or {"name": "none"})
        aug = as_settings(AugmentConfig, augment)
        # how files become this model's input, for the test loop, predictors and exports
        self.preprocess = as_settings(PreprocessSpec, preprocess)
        # checkpoints keep plain dictionaries (loadable with weights_only=True), whatever came in
        self.hparams.update(
            preprocess=self.preprocess.to_dict(),
            augment=aug.to_dict(),
            finetune=self.finetune.to_dict(),
        )
        # augment.device=cpu: the DataLoader workers augment (albumentations); nothing here
        self.augment = BatchAugment(aug if aug.device == "batch" else AugmentConfig())
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # kept outside the module tree, so checkpoints hold one copy of the weights either way
        object.__setattr__(self, "_forward_net", torch.compile(self.net) if compile else self.net)
        # multi-label metrics are computed per finding at the end of each epoch (scikit-learn,
        # unknown labels left out); single-label ones accumulate in torchmetrics
        self.val_metrics = None if self.multilabel else make_metrics(self.num_classes, "val")
        self.test_metrics = None if self.multilabel else make_metrics(self.num_classes, "test")
        # decision threshold on the positive class (binary): chosen on validation, saved in
        # checkpoints, applied unchanged to test and by predictors
        self.threshold: float | None = None
        self.threshold_policy: str | None = None
        self.evaluation_settings: dict = {}
        # False while a pass only collects predictions (threshold selection): no logger points
        self.log_eval_metrics = True
        # the split the test loop runs on: "test", or what eval.py split=... names; every
        # metric it logs and its stored predictions carry that name, never "test/" for val
        self.test_split = "test"
        self._outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.results: dict[str, dict] = {}  # per stage: probs, labels, manifest rows

    # ------------------------------------------------------------------ data on the device
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y, idx = batch
        if self.trainer.training:
            # uint8 in, floats in [0, 1] out (a fast route on CPUs), then the same as below
            return self.to_network_input(self.augment(x)), y, idx
        return self.to_network_input(x), y, idx

    def to_network_input(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 1] float) batch (B, 1, S, S) -> what the network expects.

        The one place evaluation, testing and the Predictor prepare inputs: no train/serve skew.
        """
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        x = self.input_spec.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_net(x)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at step {self.global_step}: "
                "lower model.optimizer.lr or check the data"
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def _eval_step(self, batch, stage: str, metrics: torchmetrics.MetricCollection):
        x, y, idx = batch
        logits = self(x)
        probs = logits.float().sigmoid() if self.multilabel else logits.float().softmax(1)
        if self.log_eval_metrics:
            loss = self.criterion(logits, y)
            self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(y))
            if metrics is not None:
                _update(metrics, probs, y, self.num_classes)
                self.log_dict(metrics, on_epoch=True)
        self._outputs.append((probs.detach(), y.detach(), idx.detach()))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_split, self.test_metrics)

    def on_validation_epoch_start(self):
        self._outputs = []

    def on_test_epoch_start(self):
        self._outputs = []
        # threshold-dependent test metrics use the threshold chosen on validation
        if not self.multilabel:
            t = 0.5 if self.threshold is None else self.threshold
            self.test_metrics = make_metrics(self.num_classes, self.test_split, t).to(self.device)

    def _gather_outputs(self, stage: str) -> None:
        if not self._outputs:
            return
        probs, y, idx = (torch.cat([o[i] for o in self._outputs]) for i in range(3))
        if self.trainer.world_size > 1:
            probs, y, idx = (self._gather_uneven(t) for t in (probs, y, idx))
        self.results[stage] = {"probs": probs.cpu(), "labels": y.cpu(), "rows": idx.cpu()}
        self._outputs = []

    def _gather_uneven(self, t: torch.Tensor) -> torch.Tensor:
        """All ranks' rows, in rank order; shards may differ in length (no padding samples)."""
        sizes = self.all_gather(torch.tensor([t.shape[0]], device=t.device)).flatten().tolist()
        pad = t.new_zeros((max(sizes) - t.shape[0], *t.shape[1:]))
        gathered = self.all_gather(torch.cat([t, pad]))
        return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])

    def on_validation_epoch_end(self):
        self._gather_outputs("val")
        self._log_multilabel("val")

    def on_test_epoch_end(self):
        self._gather_outputs(self.test_split)
        self._log_multilabel(self.test_split)

    def _log_multilabel(self, stage: str) -> None:
        """Multi-label: each finding's AUROC and average precision and their macro means
        (``<stage>/auroc``: what checkpoints monitor and sweeps optimize), from every rank's
        gathered predictions, unknown labels left out."""
        if not self.multilabel or not self.log_eval_metrics or stage not in self.results:
            return
        from cxrlab.evaluation.metrics import multilabel_metrics

        r = self.results[stage]
        m = multilabel_metrics(r["labels"].numpy(), r["probs"].numpy(), self.class_names,
                               self.threshold)  # fmt: skip
        values = {f"{stage}/{k}": v for k, v in m["macro"].items()}
        for c, pc in m["per_finding"].items():
            values[f"{stage}/auroc_{c}"] = pc["auroc"]
            values[f"{stage}/average_precision_{c}"] = pc["average_precision"]
        # NaN where undefined (a finding with one class in the split); every rank logs the same
        self.log_dict({k: float(v) for k, v in values.items()}, sync_dist=False)

    # ------------------------------------------------------------------ evaluation settings
    def use_threshold(self, value, policy: str) -> None:
        """The binary decision threshold (multi-label: one per finding), chosen on validation,
        that testing, the checkpoint and predictors apply."""
        value = [float(v) for v in value] if isinstance(value, (list, tuple)) else float(value)
        self.threshold, self.threshold_policy = value, str(policy)

    def use_evaluation_settings(self, settings: dict) -> None:
        """The report's bootstrap settings, kept in the checkpoint for eval.py."""
        self.evaluation_settings = dict(settings)

    def test_as(self, split: str) -> None:
        """Name the split the test loop runs on (eval.py split=val): metrics are logged as
        ``<split>/...`` and predictions kept under that name."""
        self.test_split = str(split)

    @contextmanager
    def collecting_predictions(self):
        """Validation passes inside only collect predictions: no metric points for loggers."""
        self.log_eval_metrics = False
        try:
            yield self
        finally:
            self.log_eval_metrics = True

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["cxrlab"] = {
            "threshold": self.threshold,
            "threshold_policy": self.threshold_policy,
            "evaluation": self.evaluation_settings,
            # which pretrained weights training started from (name, file, sha256) or none
            "pretrained": self.pretrained_weights,
            "format": 1,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get("cxrlab", {})
        # what the training run started from, not what this reload did (it loads no weights)
        self.pretrained_weights = extra.get("pretrained")
        self.threshold = extra.get("threshold")
        self.threshold_policy = extra.get("threshold_policy")
        self.evaluation_settings = extra.get("evaluation", {})

    # ------------------------------------------------------------------ optimization
    def configure_callbacks(self):
        """The fine-tuning policy travels with the model (train.py, eval.py, sweeps alike)."""
        if self.finetune.policy == "full":
            return []
        blocks = resolve_blocks(self.net, BACKBONES[self.hparams.backbone].blocks)
        return [Finetuner(self.finetune, blocks)]

    def configure_optimizers(self):
        cfg = dict(self.optimizer_cfg)
        name = cfg.pop("name", "adam")
        lr = float(cfg.pop("lr", 1e-3))
        weight_decay = float(cfg.pop("weight_decay", 0.0))
        # head / backbone groups, each with and without weight decay (norm weights, biases)
        groups = param_groups(self.net, self.finetune, lr, weight_decay)
        opt = OPTIMIZERS[name](groups, lr=lr, **cfg)
        sched = dict(self.scheduler_cfg)
        build = SCHEDULERS[sched.pop("name", "none")]
        if build is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": build(self, opt, sched)}
