"""What ``train.py`` does: validate, instantiate from config, fit, test the best checkpoint.

In the manner of lightning-hydra-template: the entry point is three lines, this function holds
the logic and returns the metric named by ``optimized_metric`` (for sweeps).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from cxrlab.config import validate
from cxrlab.data.datamodule import CXRDataModule

log = logging.getLogger(__name__)


def instantiate_group(cfg: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group that has a ``_target_``."""
    out = []
    for _, conf in (cfg or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            out.append(hydra.utils.instantiate(conf))
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}/"))
        else:
            out[key] = v
    return out


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Run one training (and test) run; returns (metrics, objects)."""
    validate(cfg)
    out_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)

    log.info("Selecting data <%s>", cfg.data.source.name)
    dm: CXRDataModule = hydra.utils.instantiate(cfg.data)
    manifest = dm.select()  # cheap, so wrong settings fail before any real work
    model = hydra.utils.instantiate(
        cfg.model,
        class_names=dm.classes,
        class_counts=dm.class_counts("train"),
        preprocess=dm.preprocess.to_dict(),
        augment=OmegaConf.to_container(cfg.augment, resolve=True),
        _convert_="all",
    )
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )

    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        cols = [c for c in ("path", "patient_id", "label", "split") if c in manifest]
        manifest[cols].to_csv(out_dir / "splits.csv", index=False)
    hparams = flatten(OmegaConf.to_container(cfg, resolve=True))
    for lg in loggers:
        lg.log_hyperparams(hparams)

    metrics: dict = {}
    if cfg.get("train", True):
        log.info("Training")
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    if cfg.get("test", True):
        ckpt = _best_checkpoint(trainer)
        log.info("Testing %s on the test split", ckpt or "the current weights")
        trainer.test(model, datamodule=dm, ckpt_path=ckpt, weights_only=False)
        test_metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")
        }
        metrics.update(test_metrics)
        if trainer.is_global_zero:
            write_test_outputs(out_dir, dm, model, test_metrics, ckpt)

    for lg in loggers:
        lg.finalize("success")
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish()
    return metrics, {"trainer": trainer, "model": model, "datamodule": dm}


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    path = getattr(cb, "best_model_path", "") if cb is not None else ""
    if path and Path(path).is_file():
        return path
    log.warning("No best checkpoint (checkpointing off or fast_dev_run): testing current weights")
    return None


def write_test_outputs(
    out_dir: Path, dm: CXRDataModule, model, metrics: dict, ckpt: str | None
) -> None:
    """``test_metrics.json`` (which split, how many images and patients) and predictions.csv."""
    res = model.test_results
    rows = res["rows"].numpy()
    df = dm.manifest.iloc[rows][["path", "patient_id", "label"]].copy()
    probs = res["probs"].numpy()
    for i, c in enumerate(dm.classes):
        df[f"prob_{c}"] = probs[:, i]
    df["prediction"] = [dm.classes[i] for i in probs.argmax(1)]
    df.to_csv(out_dir / "predictions.csv", index=False)
    summary = {
        "split": "test",
        "images": int(len(df)),
        "patients": int(df["patient_id"].nunique()),
        "classes": dm.classes,
        "checkpoint": ckpt,
        "metrics": {k: (None if math.isnan(v) else v) for k, v in sorted(metrics.items())},
        "data": dm.describe(),
        "skipped_unreadable": len(dm.skipped),
    }
    (out_dir / "test_metrics.json").write_text(json.dumps(summary, indent=2))
    log.info(
        "Test split (%d images, %d patients): %s",
        summary["images"],
        summary["patients"],
        ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())),
    )
