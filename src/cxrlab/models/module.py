"""The LightningModule: uint8 batch -> augment (train only) -> normalize -> backbone -> loss.

Everything a predictor needs (backbone name, class names, input spec, preprocessing) is saved in
the checkpoint's hyper-parameters, so a checkpoint alone restores the whole input contract.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pytorch_lightning as pl
import torch
import torchmetrics
from torchmetrics import classification as tmc

from cxrlab.data.augment import AugmentConfig, BatchAugment
from cxrlab.models.backbones import build_backbone
from cxrlab.models.losses import build_loss

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "plateau")


def make_metrics(num_classes: int, prefix: str) -> torchmetrics.MetricCollection:
    """Binary tasks: the positive class (index 1); multi-class: macro averages."""
    if num_classes == 2:
        m = {
            "auroc": tmc.BinaryAUROC(),
            "accuracy": tmc.BinaryAccuracy(),
            "balanced_accuracy": tmc.MulticlassRecall(2, average="macro"),
            "f1": tmc.BinaryF1Score(),
            "sensitivity": tmc.BinaryRecall(),
            "specificity": tmc.BinarySpecificity(),
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


def _update(
    metrics: torchmetrics.MetricCollection, probs: torch.Tensor, y: torch.Tensor, num_classes: int
) -> None:
    if num_classes == 2:
        for name, metric in metrics.items(keep_base=True):
            if name.endswith("balanced_accuracy"):
                metric.update(probs, y)
            else:
                metric.update(probs[:, 1], y)
    else:
        metrics.update(probs, y)


class CXRClassifier(pl.LightningModule):
    def __init__(
        self,
        backbone: str,
        class_names: Sequence[str],
        class_counts: Sequence[int],
        preprocess: Mapping,
        pretrained: str = "auto",
        weights: str | None = None,
        dropout: float = 0.0,
        loss: Mapping | None = None,
        optimizer: Mapping | None = None,
        scheduler: Mapping | None = None,
        augment: Mapping | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        if self.num_classes < 2:
            raise ValueError(f"need at least two classes, got {self.class_names}")
        self.net, self.input_spec = build_backbone(
            backbone, self.num_classes, dropout, pretrained, weights
        )
        self.hparams["input_spec"] = self.input_spec.to_dict()
        loss = dict(loss or {"name": "ce"})
        self.criterion = build_loss(loss.pop("name", "ce"), class_counts, **loss)
        self.optimizer_cfg = dict(optimizer or {"name": "adam", "lr": 1e-3})
        if self.optimizer_cfg.get("name", "adam") not in OPTIMIZERS:
            raise ValueError(
                f"model.optimizer.name={self.optimizer_cfg['name']!r}: use one of "
                f"{list(OPTIMIZERS)}"
            )
        self.scheduler_cfg = dict(scheduler or {"name": "none"})
        if self.scheduler_cfg.get("name", "none") not in SCHEDULERS:
            raise ValueError(
                f"model.scheduler.name={self.scheduler_cfg['name']!r}: use one of "
                f"{list(SCHEDULERS)}"
            )
        aug = {k: v for k, v in dict(augment or {}).items() if k != "device"}
        self.augment = BatchAugment(AugmentConfig(**aug))
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._forward_net = torch.compile(self.net) if compile else self.net
        self.val_metrics = make_metrics(self.num_classes, "val")
        self.test_metrics = make_metrics(self.num_classes, "test")
        self._test_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.test_results: dict | None = None

    # ------------------------------------------------------------------ data on the device
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y, idx = batch
        x = x.float().div_(255.0)
        if self.trainer is not None and self.trainer.training:
            x = self.augment(x)
        x = self.input_spec.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y, idx

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

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        logits = self(x)
        self.log(
            "val/loss",
            self.criterion(logits, y),
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=len(y),
        )
        _update(self.val_metrics, logits.float().softmax(1), y, self.num_classes)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=False)

    def test_step(self, batch, batch_idx):
        x, y, idx = batch
        logits = self(x)
        probs = logits.float().softmax(1)
        self.log(
            "test/loss", self.criterion(logits, y), on_epoch=True, sync_dist=True, batch_size=len(y)
        )
        _update(self.test_metrics, probs, y, self.num_classes)
        self.log_dict(self.test_metrics, on_epoch=True)
        self._test_outputs.append((probs.detach(), y.detach(), idx.detach()))

    def on_test_epoch_start(self):
        self._test_outputs = []

    def on_test_epoch_end(self):
        probs = torch.cat([o[0] for o in self._test_outputs])
        y = torch.cat([o[1] for o in self._test_outputs])
        idx = torch.cat([o[2] for o in self._test_outputs])
        if self.trainer.world_size > 1:
            probs = self.all_gather(probs).flatten(0, 1)
            y = self.all_gather(y).flatten()
            idx = self.all_gather(idx).flatten()
        self.test_results = {"probs": probs.cpu(), "labels": y.cpu(), "rows": idx.cpu()}
        if self.trainer.is_global_zero:
            log_test_plots(self.trainer.loggers, self.test_results, self.class_names)

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self):
        cfg = dict(self.optimizer_cfg)
        name = cfg.pop("name", "adam")
        params = [p for p in self.parameters() if p.requires_grad]
        if name == "adam":
            opt = torch.optim.Adam(params, **cfg)
        elif name == "adamw":
            opt = torch.optim.AdamW(params, **cfg)
        else:
            opt = torch.optim.SGD(params, **cfg)
        sched = dict(self.scheduler_cfg)
        kind = sched.pop("name", "none")
        if kind == "none":
            return opt
        if kind == "cosine":
            max_epochs = self.trainer.max_epochs if self.trainer and self.trainer.max_epochs else 10
            s = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=max(1, max_epochs), eta_min=sched.get("eta_min", 0.0)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": s, "interval": "epoch"}}
        s = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            mode=sched.get("mode", "max"),
            factor=sched.get("factor", 0.5),
            patience=sched.get("patience", 2),
        )
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": s, "monitor": sched.get("monitor", "val/auroc")},
        }


def log_test_plots(loggers, results: dict, class_names: list[str]) -> None:
    """Confusion matrix and PR curve on W&B (the test split), when a W&B logger is active."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        if not isinstance(lg, WandbLogger):
            continue
        import wandb

        y = results["labels"].numpy().tolist()
        probs = results["probs"].numpy()
        preds = probs.argmax(1).tolist()
        lg.experiment.log(
            {
                "test/confusion_matrix": wandb.plot.confusion_matrix(
                    y_true=y, preds=preds, class_names=class_names, title="Confusion matrix (test)"
                ),
                "test/pr_curve": wandb.plot.pr_curve(
                    y, probs, labels=class_names, title="Precision-recall (test)"
                ),
                "test/roc_curve": wandb.plot.roc_curve(
                    y, probs, labels=class_names, title="ROC (test)"
                ),
            }
        )
