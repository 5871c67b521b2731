"""What ``train.py`` does: validate, instantiate from config, fit, test the best checkpoint.

In the manner of lightning-hydra-template: the entry point is three lines, this function holds
the logic and returns the metric named by ``optimized_metric`` (for sweeps).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import hydra
import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger

from cxrlab.config import ConfigError, check_data_root, validate
from cxrlab.data.datamodule import CXRDataModule
from cxrlab.evaluation.report import headline, write_report
from cxrlab.evaluation.thresholds import choose_threshold
from cxrlab.models.weights import describe
from cxrlab.utils.checkpoints import AtomicCheckpointIO, atomic_torch_save
from cxrlab.utils.loggers import continue_csv_log
from cxrlab.utils.nested import flatten

log = logging.getLogger(__name__)


def instantiate_group(cfg: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group that has a ``_target_``."""
    out = []
    for _, conf in (cfg or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            out.append(hydra.utils.instantiate(conf))
    return out


def train(cfg: DictConfig) -> tuple[dict, dict]:
    """Run one training (and test) run; returns (metrics, objects)."""
    validate(cfg)
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
    augment = OmegaConf.to_container(cfg.augment, resolve=True)
    dm: CXRDataModule = hydra.utils.instantiate(cfg.data, augment=augment, _convert_="all")
    dm.select()  # cheap, so wrong settings fail before any real work
    model = hydra.utils.instantiate(
        cfg.model,
        class_names=dm.classes,
        class_counts=dm.class_counts("train"),
        preprocess=dm.preprocess.to_dict(),
        augment=augment,
        _convert_="all",
    )
    resumed = resume_point(cfg.get("ckpt_path")) if cfg.get("train", True) else None
    logger_cfg = name_trial_runs(cfg.get("logger"), cfg.get("optuna_trial"))
    if resumed is not None:
        logger_cfg = continue_logger_runs(logger_cfg, out_dir)
    loggers = instantiate_group(logger_cfg)
    if resumed is not None:
        for lg in loggers:
            if isinstance(lg, CSVLogger):
                continue_csv_log(lg, *resumed)
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not loggers:
        # logger=[] or ~logger (as lightning-hydra-template's sweeps pass): nothing to log
        # learning rates to, and Lightning refuses a LearningRateMonitor without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        log.info("No logger (logger=[]): metrics go to train.log and the report only")
    reporter = None
    if cfg.get("optuna_trial"):
        from cxrlab.sweep.trial import OptunaTrialReporter, report_mode

        reporter = OptunaTrialReporter(cfg.optuna_trial, str(cfg.optimized_metric), report_mode())
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
    hparams = flatten(OmegaConf.to_container(cfg, resolve=True))
    hparams.update(flatten({"pretrained_weights": model.pretrained_weights}))
    for lg in loggers:
        lg.log_hyperparams(hparams)

    try:
        with ddp_ranks_follow_this_job():
            metrics, pruned = _fit_and_test(cfg, trainer, model, dm, loggers, reporter, out_dir)
    except BaseException:
        # close the loggers' runs and the process group even when the run fails: in a sweep
        # the next trial runs in this process and must not log into this run's W&B run
        finish(trainer, loggers, "failed")
        raise
    finish(trainer, loggers, "finished" if pruned else "success")
    if pruned and trainer.is_global_zero:
        import optuna

        raise optuna.TrialPruned(reporter.pruned_message())
    return metrics, {"trainer": trainer, "model": model, "datamodule": dm}


def resume_point(ckpt_path: str | None) -> tuple[int, int] | None:
    """(epoch, global step) that a resumed run starts after, or None for a fresh run."""
    if not ckpt_path:
        return None
    state = torch.load(str(ckpt_path), map_location="cpu", weights_only=False, mmap=True)
    epoch, step = int(state.get("epoch", -1)), int(state.get("global_step", 0))
    log.info("Resuming from %s (after epoch %d, step %d)", ckpt_path, epoch, step)
    return epoch, step


def continue_logger_runs(logger_cfg: DictConfig | None, out_dir: Path) -> DictConfig | None:
    """A resumed run logs on into the W&B run its first part started (same run id)."""
    if not logger_cfg:
        return logger_cfg
    from cxrlab.utils.loggers import previous_wandb_id

    logger_cfg = logger_cfg.copy()
    with open_dict(logger_cfg):
        for conf in logger_cfg.values():
            target = str(conf.get("_target_", "")) if isinstance(conf, DictConfig) else ""
            if target.endswith("wandb_logger") or target.endswith("WandbLogger"):
                run_id = conf.get("id") or previous_wandb_id(out_dir)
                if run_id:
                    conf.id = run_id
                    log.info("W&B: continuing run %s", run_id)
    return logger_cfg


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


def _fit_and_test(cfg, trainer, model, dm, loggers, reporter, out_dir) -> tuple[dict, bool]:
    """(metrics, pruned): fit, choose the threshold on validation, test the best checkpoint."""
    metrics: dict = {}
    if cfg.get("train", True):
        log.info("Training")
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        cb = trainer.checkpoint_callback
        if cb is not None and cb.monitor and cb.best_model_score is not None:
            # the monitored metric of the checkpoint that is tested, not of the last epoch
            metrics[cb.monitor] = float(cb.best_model_score)
        if reporter is not None and reporter.pruned_at is not None:
            # a pruned trial is not tested: its test metrics would only invite a look
            return metrics, True

    if cfg.get("test", True):
        ckpt = _best_checkpoint(trainer)
        ev = cfg.get("evaluation") or {}
        set_threshold(trainer, model, dm, ckpt, ev)
        log.info("Testing %s on the test split", ckpt or "the current weights")
        trainer.test(model, datamodule=dm, ckpt_path=ckpt, weights_only=False)
        metrics.update(
            {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        )
        if trainer.is_global_zero:
            report = write_split_report(
                out_dir / "report", dm, model, "test", ev, ckpt, loggers=loggers
            )
            write_test_metrics(out_dir, report, ckpt)
    return metrics, False


def finish(trainer: pl.Trainer, loggers, status: str) -> None:
    """Close the loggers and the DDP process group, so a sweep's next trial starts clean."""
    for lg in loggers:
        try:
            lg.finalize(status)
        except Exception as e:  # closing a logger must not hide the run's own error
            log.warning("Closing logger %s failed: %s", type(lg).__name__, e)
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        wandb.finish(exit_code=0 if status != "failed" else 1)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Lightning keeps the group after fit/test; the next trial in this process (a sweep)
        # would otherwise join the old group while its new worker processes wait for a new one
        if status != "failed":  # a failed rank may never reach a barrier
            trainer.strategy.barrier("cxrlab-finish")
        torch.distributed.destroy_process_group()


def name_trial_runs(logger_cfg: DictConfig | None, trial) -> DictConfig | None:
    """Sweep trials: each logger's run carries the study and trial number in its name.

    (The trial's ``optuna_trial.*`` values reach every logger's hyper-parameters too, with
    the rest of the config.)
    """
    if not logger_cfg or not trial:
        return logger_cfg
    logger_cfg = logger_cfg.copy()
    study, number = str(trial.study), int(trial.number)
    with open_dict(logger_cfg):
        for conf in logger_cfg.values():
            target = str(conf.get("_target_", "")) if isinstance(conf, DictConfig) else ""
            if target.endswith("wandb_logger") or target.endswith("WandbLogger"):
                conf.name = conf.get("name") or f"{study}-trial-{number}"
                conf.group = conf.get("group") or study
            elif "MLFlowLogger" in target or target.endswith("mlflow_logger"):
                conf.run_name = conf.get("run_name") or f"{study}-trial-{number}"
                conf.tags = {
                    **(conf.get("tags") or {}),
                    "optuna_study": study,
                    "optuna_trial": str(number),
                }
            # TensorBoard and CSV write into the trial's own run folder already
    return logger_cfg


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    path = getattr(cb, "best_model_path", "") if cb is not None else ""
    if path and Path(path).is_file():
        return path
    log.warning("No best checkpoint (checkpointing off or fast_dev_run): testing current weights")
    return None


def set_threshold(trainer: pl.Trainer, model, dm, ckpt: str | None, ev) -> None:
    """Choose the decision threshold on the validation split (binary tasks) and store it.

    The best checkpoint's validation predictions decide it; it is written into the checkpoint
    file, so testing, eval.py and predictors apply exactly this value.
    """
    policy = ev.get("threshold", "youden")
    # the report's bootstrap settings travel too, so eval.py reproduces the report exactly
    settings = {"bootstrap": int(ev.get("bootstrap", 1000)), "seed": int(ev.get("seed", 0))}
    if model.num_classes == 2:
        # (validate reloads the checkpoint: what it restores is overwritten below, not before)
        model.log_eval_metrics = False  # collect predictions only: no second val/ point
        trainer.validate(model, datamodule=dm, ckpt_path=ckpt, weights_only=False, verbose=False)
        model.log_eval_metrics = True
    model.evaluation_settings = settings
    if model.num_classes != 2:
        _update_checkpoint(trainer, ckpt, {"evaluation": settings})
        return
    val = model.results["val"]
    model.threshold = choose_threshold(val["labels"].numpy(), val["probs"][:, 1].numpy(), policy)
    model.threshold_policy = str(policy)
    log.info("Threshold %.4f chosen on the validation split (policy %s)", model.threshold, policy)
    _update_checkpoint(
        trainer,
        ckpt,
        {
            "threshold": model.threshold,
            "threshold_policy": model.threshold_policy,
            "evaluation": model.evaluation_settings,
        },
    )


def _update_checkpoint(trainer: pl.Trainer, ckpt: str | None, extra: dict) -> None:
    """Add to the checkpoint's ``cxrlab`` section (rank 0 writes; every rank waits)."""
    if ckpt and trainer.is_global_zero:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        state["cxrlab"] = {**state.get("cxrlab", {}), **extra}
        atomic_torch_save(state, ckpt)
    trainer.strategy.barrier("cxrlab-checkpoint")


def predictions_frame(dm: CXRDataModule, results: dict) -> pd.DataFrame:
    """Per-image probabilities of a stage, joined with the manifest (path, patient, label)."""
    rows = results["rows"].numpy()
    df = dm.manifest.iloc[rows][["path", "patient_id", "label"]].reset_index(drop=True)
    probs = results["probs"].numpy()
    for i, c in enumerate(dm.classes):
        df[f"prob_{c}"] = probs[:, i]
    return df


def write_split_report(
    out: Path, dm: CXRDataModule, model, split: str, ev, ckpt, loggers=()
) -> dict:
    context = {
        "checkpoint": ckpt,
        "model": model.hparams.get("backbone"),
        "pretrained": model.pretrained_weights,
        "data": dm.describe(),
        "skipped_unreadable": len(dm.skipped),
        "left_out_by_source": dict(dm.dropped),  # {reason: images}, before subset and split
    }
    report = write_report(
        predictions_frame(dm, model.results[split]),
        dm.classes,
        out,
        split,
        threshold=model.threshold,
        threshold_policy=model.threshold_policy,
        n_boot=int(ev.get("bootstrap", 1000)),
        seed=int(ev.get("seed", 0)),
        context=context,
    )
    log_report(loggers, report, out)
    return report


def log_report(loggers, report: dict, out: Path) -> None:
    """The report's headline metrics and pictures to every logger that takes them."""
    values = {k: v for k, v in headline(report).items() if v is not None}
    for lg in loggers:
        name = type(lg).__name__
        if name == "WandbLogger":
            import wandb

            rows = [[k, v] for k, v in sorted(values.items())]
            lg.experiment.log(
                {
                    f"{report['split']}/report_metrics": wandb.Table(
                        columns=["metric", "value"], data=rows
                    ),
                    **{
                        f"{report['split']}/{p.stem}": wandb.Image(str(p))
                        for p in sorted(out.glob("*.png"))
                    },
                }
            )
        elif name == "MLFlowLogger":
            # the whole report folder (metrics.json, predictions, pictures, model card)
            lg.experiment.log_artifacts(lg.run_id, str(out), artifact_path=out.name)
            lg.log_metrics({f"report/{k}": v for k, v in values.items()})
        elif name == "TensorBoardLogger":
            import matplotlib.image as mpimg

            for p in sorted(out.glob("*.png")):
                lg.experiment.add_image(
                    f"{report['split']}/{p.stem}", mpimg.imread(p)[..., :3], dataformats="HWC"
                )


def write_test_metrics(out_dir: Path, report: dict, ckpt: str | None) -> None:
    """``test_metrics.json``: the headline test metrics with the split's counts."""
    summary = {
        "split": "test",
        "images": report["images"],
        "patients": report["patients"],
        "classes": report["classes"],
        "checkpoint": ckpt,
        "pretrained": report.get("pretrained"),
        "threshold": report["threshold"],
        "metrics": headline(report),
        "data": report.get("data"),
        "skipped_unreadable": report.get("skipped_unreadable", 0),
        "left_out_by_source": report.get("left_out_by_source", {}),
        "report": "report/metrics.json (with 95% patient-bootstrap intervals)",
    }
    (out_dir / "test_metrics.json").write_text(json.dumps(summary, indent=2))
    shown = {k: v for k, v in summary["metrics"].items() if v is not None and "/macro" not in k}
    log.info(
        "Test split (%d images, %d patients): %s",
        summary["images"],
        summary["patients"],
        ", ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items())),
    )
