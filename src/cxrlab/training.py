"""What ``train.py`` does: validate, instantiate from config, fit, test the best checkpoint.

In the manner of lightning-hydra-template: the entry point is three lines, this function holds
the logic and returns the metric named by ``optimized_metric`` (for sweeps).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor

from cxrlab.checkpoints import AtomicCheckpointIO, resume_point
from cxrlab.config import ConfigError, check_data_root, validate
from cxrlab.evaluation.report import write_split_report, write_test_metrics
from cxrlab.evaluation.thresholds import choose_on_validation
from cxrlab.models.weights import describe
from cxrlab.utils.instantiate import instantiate_data, instantiate_group, instantiate_model
from cxrlab.utils.loggers import (
    close_runs,
    continue_logger_runs,
    continue_logs,
    log_dataset_artifact,
    log_model_artifact,
    log_split,
    name_runs,
    tracked,
)
from cxrlab.utils.resolvers import first_metric, metric_names
from cxrlab.utils.tracking import TrackingCallback, TrackingSettings, tracked_tables

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Run one training (and test) run; returns (metrics, objects)."""
    settings = validate(cfg)
    check_data_root(cfg.data.source)
    if cfg.get("ckpt_path") and not Path(str(cfg.ckpt_path)).is_file():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such file")
    out_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    # the pretrained weights first: fetched on first use, and model.pretrained=true stops here,
    # before any data work, when they cannot be had; the run's first lines say what it uses
    prov = starting_weights(cfg.model)
    log.info("Model %s starts from %s", cfg.model.backbone, describe(prov))

    log.info("Selecting data <%s>", cfg.data.source.name)
    dm = instantiate_data(cfg, settings)
    dm.select()  # cheap, so wrong settings fail before any real work
    model = instantiate_model(cfg.model, dm, settings)
    resumed = resume_point(cfg.get("ckpt_path")) if cfg.get("train", True) else None
    logger_cfg = name_runs(cfg.get("logger"), cfg)
    if resumed is not None:
        logger_cfg = continue_logger_runs(logger_cfg, out_dir)
    loggers = instantiate_group(logger_cfg)
    if resumed is not None:
        continue_logs(loggers, *resumed)
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not loggers:
        # logger=[] or ~logger (as lightning-hydra-template's sweeps pass): nothing to log
        # learning rates to, and Lightning refuses a LearningRateMonitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        log.info("No logger (logger=[]): metrics go to train.log and the report only")
    history = ValidationHistory()
    callbacks.append(history)
    tracking = TrackingSettings(**OmegaConf.to_container(cfg.get("tracking") or {}, resolve=True))
    if tracked(loggers):
        callbacks.append(TrackingCallback(tracking, dm.classes))
    reporter = None
    if cfg.get("optuna_trial"):
        from cxrlab.sweep.trial import OptunaTrialReporter, report_mode, skip_if_pruned

        # a cross-validated trial's later folds do not train once an earlier fold was pruned
        skip_if_pruned(cfg.optuna_trial)
        reporter = OptunaTrialReporter(
            cfg.optuna_trial, first_metric(cfg.optimized_metric), report_mode()
        )
        callbacks.append(reporter)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        # a kill while a checkpoint is written leaves the previous one whole
        plugins=[AtomicCheckpointIO()],
    )

    # decode the selection now (the cache; reused when it exists), so splits.csv says which
    # images the run uses and which it skips as unreadable, exactly as explore.py reports them
    splits = dm.splits_frame()
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        splits.to_csv(out_dir / "splits.csv", index=False)
        log_dataset_artifact(loggers, out_dir / "splits.csv", *dataset_artifact(cfg, dm))
    # the run config, once and nested (each logger flattens it as its format needs), with the
    # weights the model started from
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams["pretrained_weights"] = model.pretrained_weights
    for lg in loggers:
        lg.log_hyperparams(hparams)

    try:
        with ddp_ranks_follow_this_job():
            metrics, pruned = _fit_and_test(
                cfg, trainer, model, dm, loggers, reporter, out_dir, history, tracking
            )
    except BaseException:
        # close the loggers' runs and the process group even when the run fails: in a sweep
        # the next trial runs in this process and must not log into this run's W&B run
        finish(trainer, loggers, "failed")
        raise
    summary = {}
    cb = trainer.checkpoint_callback
    if cb is not None and cb.monitor and cb.monitor in metrics:
        summary[f"best/{cb.monitor}"] = metrics[cb.monitor]  # the tested checkpoint's
    value = objective(metrics, cfg.get("optimized_metric"))
    if cfg.get("optuna_trial") and isinstance(value, float):
        summary["optuna/value"] = value
    finish(trainer, loggers, "finished" if pruned else "success", summary)
    if pruned and trainer.is_global_zero:
        import optuna

        raise optuna.TrialPruned(reporter.pruned_message())
    return metrics, {"trainer": trainer, "model": model, "datamodule": dm}


def dataset_artifact(cfg, dm) -> tuple[str, dict]:
    """The name and metadata of the run's data selection as a tracker's dataset artifact."""
    split = OmegaConf.to_container(cfg.data.get("split") or {}, resolve=True)
    name = f"splits-{dm.source_name}-{dm.task}"
    meta = {"source": dm.source_name, "task": dm.task, "classes": list(dm.classes),
            "dataset_size": dm.dataset_size, "split": split, "counts": dm.describe(),
            "skipped_unreadable": len(dm.skipped)}  # fmt: skip
    return name, meta


def starting_weights(model_cfg) -> dict:
    """Fetch (or find) the model's pretrained weights now; their provenance, or none's reason.

    The model builder then finds the file in the cache (or the failure this process recorded).
    """
    from cxrlab.models.backbones import resolve_weights
    from cxrlab.models.weights import from_checkpoint

    if model_cfg.get("init_from"):
        return from_checkpoint(str(model_cfg.init_from))
    pretrained = model_cfg.get("pretrained", "auto")
    return resolve_weights(str(model_cfg.backbone), model_cfg.get("weights"), pretrained)[1]


LIGHTNING_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def ddp_ranks_follow_this_job():
    """In a Hydra multirun job, make the DDP ranks that Lightning starts run *this* job.

    Lightning starts ranks 1..N-1 by re-running ``sys.argv`` with ``hydra.run.dir`` set to
    ``HydraConfig.run.dir``. In a sweep, ``sys.argv`` is the whole sweep command (``-m`` and
    every search space) and ``run.dir`` is not the job's folder: each extra rank would start a
    sweep of its own and train another trial's configuration. For the duration of the job the
    command becomes the job's own overrides and ``run.dir`` the job's folder. (Plain Hydra
    multiruns, ``-m model=a,b trainer=ddp``, are fixed by the same means.)
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hc = HydraConfig.get()
    argv, run_dir = sys.argv, hc.run.dir
    # Lightning also leaves LOCAL_RANK etc. in this process's environment; the next job would
    # take them as "ranks are started externally" and wait forever for ranks nobody starts
    env = {k: os.environ.get(k) for k in LIGHTNING_DDP_ENV}
    sys.argv = [argv[0], *hc.overrides.task]
    with read_write(hc), open_dict(hc):
        hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hc), open_dict(hc):
            hc.run.dir = run_dir
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def objective(metrics: dict, optimized):
    """What train.py returns to a sweep: the optimized metric's value, or the values of
    several (a list, in their order) for a multi-objective study; None where one is missing."""
    if optimized is None:
        return None
    if isinstance(optimized, str):
        return metrics.get(optimized)
    return [metrics.get(m) for m in metric_names(optimized)]


class ValidationHistory(pl.Callback):
    """Every epoch's validation metrics, so that what a run returns is its best checkpoint's
    values: all of them, not only the monitored one (a multi-objective sweep's other metric
    must come from the same epoch as the first)."""

    def __init__(self):
        self.epochs: dict[int, dict[str, float]] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self.epochs[trainer.current_epoch] = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
        }

    def at(self, monitor: str, best: float) -> dict[str, float] | None:
        """The metrics of the first epoch whose ``monitor`` value is ``best`` (the epoch the
        best checkpoint is from), or None (e.g. it was before a resume)."""
        for epoch in sorted(self.epochs):
            v = self.epochs[epoch].get(monitor)
            if v is not None and abs(v - best) <= 1e-7 * max(1.0, abs(best)):
                return self.epochs[epoch]
        return None


def _fit_and_test(
    cfg, trainer, model, dm, loggers, reporter, out_dir, history=None, tracking=None
) -> tuple[dict, bool]:
    """(metrics, pruned): fit, choose the threshold on validation, test the best checkpoint."""
    metrics: dict = {}
    if cfg.get("train", True):
        log.info("Training")
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        cb = trainer.checkpoint_callback
        if cb is not None and cb.monitor and cb.best_model_score is not None:
            # the validation metrics of the checkpoint that is tested, not of the last epoch
            best = float(cb.best_model_score)
            metrics.update((history.at(cb.monitor, best) if history else None) or {})
            metrics[cb.monitor] = best
        if reporter is not None and reporter.pruned_at is not None:
            # a pruned trial is not tested: its test metrics would only invite a look
            return metrics, True

    if cfg.get("test", True):
        ckpt = _best_checkpoint(trainer)
        ev = cfg.get("evaluation") or {}
        cv = dm.folds is not None
        tables = (
            tracked(loggers) and tracking is not None and (tracking.table_rows or tracking.worst)
        )
        choose_on_validation(trainer, model, dm, ckpt, ev, keep_predictions=cv or tables)
        if cv and trainer.is_global_zero:
            from cxrlab.evaluation.cv import write_fold_predictions

            write_fold_predictions(out_dir, dm, model)
        log.info("Testing %s on the test split", ckpt or "the current weights")
        trainer.test(model, datamodule=dm, ckpt_path=ckpt, weights_only=False)
        metrics.update(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        )
        if trainer.is_global_zero:
            report = write_split_report(out_dir / "report", dm, model, "test", ev, ckpt)
            log_split(
                loggers, report, out_dir / "report", model.results["test"], dm.classes,
                model.threshold, tracked_tables(dm, model, "test", tracking) if tables else None,
            )  # fmt: skip
            if tables:  # the validation split at the best checkpoint: its tables
                log_split(loggers, {"split": "val"}, None, None, dm.classes, model.threshold,
                          tracked_tables(dm, model, "val", tracking))  # fmt: skip
            write_test_metrics(out_dir, report, ckpt)
            cb = trainer.checkpoint_callback
            log_model_artifact(loggers, ckpt, out_dir / "report" / "model_card.md", {
                "pretrained": model.pretrained_weights, "classes": list(dm.classes),
                "threshold": model.threshold, "threshold_policy": model.threshold_policy,
                "monitor": getattr(cb, "monitor", None),
                "score": metrics.get(getattr(cb, "monitor", None) or ""),
                "test": {k: v for k, v in metrics.items() if k.startswith("test/")},
                "run_dir": str(out_dir),
            })  # fmt: skip
    return metrics, False


def finish(trainer: pl.Trainer, loggers, status: str, summary: dict | None = None) -> None:
    """Close the loggers and the DDP process group, so a sweep's next trial starts clean."""
    close_runs(loggers, status, summary)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Lightning keeps the group after fit/test; the next trial in this process (a sweep)
        # would otherwise join the old group while its new worker processes wait for a new one
        if status != "failed":  # a failed rank may never reach a barrier
            trainer.strategy.barrier("cxrlab-finish")
        torch.distributed.destroy_process_group()


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    path = getattr(cb, "best_model_path", "") if cb is not None else ""
    if path and Path(path).is_file():
        return path
    log.warning("No best checkpoint (checkpointing off or fast_dev_run): testing current weights")
    return None
