"""Every logger-specific line of cxrlab, in one room: factories that need more than a
constructor call, what each logger gets beyond Lightning's metrics (the split's charts, the
report's table and pictures), resumed and sweep-trial runs, and closing runs.

Training, evaluation and the model never branch on a logger's class: they call these.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1]
    return rc.authenticators(host) is not None


def wandb_logger(offline: bool | str = "auto", save_dir: str = ".", **kwargs):
    """A WandbLogger that never waits on a network it cannot reach.

    ``offline=auto`` runs online only when credentials exist; otherwise the run is written to
    ``<save_dir>/wandb/`` and the command that uploads it later is logged.
    """
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    if isinstance(offline, str):
        if offline != "auto":
            raise ValueError(f"logger.wandb.offline={offline!r}: use auto, true or false")
        offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_credentials_present()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if offline:
        log.info(
            "W&B runs offline (no credentials). Upload later with: wandb sync %s",
            Path(save_dir) / "wandb" / "offline-run-*",
        )
    settings = wandb.Settings(init_timeout=60, silent=True)
    return WandbLogger(offline=bool(offline), save_dir=save_dir, settings=settings, **kwargs)


def mlflow_logger(tracking_uri: str, experiment_name: str = "cxrlab", **kwargs):
    """Lightning's MLFlowLogger, with a clear message when the optional extra is missing.

    ``tracking_uri``: a local SQLite store (``sqlite:///logs/mlruns/mlflow.db``, the default)
    or a server URL (``http://mlflow.hospital.local:5000``).
    """
    try:
        import mlflow  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "logger=mlflow needs MLflow, an optional extra: pip install -e '.[mlflow]' "
            "(make install does this)"
        ) from e
    from pytorch_lightning.loggers import MLFlowLogger

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    elif kwargs.get("artifact_location"):
        kwargs["artifact_location"] = None  # a server keeps artifacts where it is configured to
    return MLFlowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, **kwargs)


def previous_wandb_id(run_dir: str | Path) -> str | None:
    """The W&B run id that an earlier part of this run folder logged to (online or offline)."""
    runs = sorted((Path(run_dir) / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    runs = [p for p in runs if p.is_dir() and p.name != "latest-run"]
    return runs[-1].name.rsplit("-", 1)[1] if runs else None


def continue_csv_log(logger, last_epoch: int, global_step: int) -> int:
    """Keep a CSVLogger's ``metrics.csv`` across a resume: the rows up to the checkpoint stay,
    the rows of the epoch that was cut off go (it runs again), new rows are appended.

    Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts; this restores
    the kept rows right after it did. Returns how many rows were kept.
    """
    import csv

    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = list(reader)

    def before_checkpoint(row: dict) -> bool:
        epoch, step = row.get("epoch", ""), row.get("step", "")
        if epoch not in ("", None):
            return float(epoch) <= last_epoch
        return step not in ("", None) and float(step) < global_step

    kept = [r for r in rows if before_checkpoint(r)]
    writer = logger.experiment  # creating it removes the old file
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=header)
        out.writeheader()
        out.writerows(kept)
    writer.metrics_keys = header
    return len(kept)


# ------------------------------------------------------------------ which logger a config builds
def logger_kind(conf) -> str | None:
    """``wandb``, ``mlflow``, ``tensorboard`` or ``csv`` for a logger's config or object."""
    if isinstance(conf, (DictConfig, dict)):
        name = str(conf.get("_target_", ""))
    else:
        name = type(conf).__name__
    name = name.rsplit(".", 1)[-1].lower()
    for kind in ("wandb", "mlflow", "tensorboard", "csv"):
        if name.startswith(kind):
            return kind
    return None


def _each_config(logger_cfg: DictConfig):
    for conf in logger_cfg.values():
        if isinstance(conf, DictConfig):
            yield conf, logger_kind(conf)


def continue_logger_runs(logger_cfg: DictConfig | None, out_dir: Path) -> DictConfig | None:
    """A resumed run logs on into the W&B run its first part started (same run id)."""
    if not logger_cfg:
        return logger_cfg
    logger_cfg = logger_cfg.copy()
    with open_dict(logger_cfg):
        for conf, kind in _each_config(logger_cfg):
            if kind == "wandb":
                run_id = conf.get("id") or previous_wandb_id(out_dir)
                if run_id:
                    conf.id = run_id
                    log.info("W&B: continuing run %s", run_id)
    return logger_cfg


def continue_logs(loggers, last_epoch: int, global_step: int) -> None:
    """A resumed run's loggers keep what was logged up to its checkpoint."""
    for lg in loggers:
        if logger_kind(lg) == "csv":
            continue_csv_log(lg, last_epoch, global_step)


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
        for conf, kind in _each_config(logger_cfg):
            if kind == "wandb":
                conf.name = conf.get("name") or f"{study}-trial-{number}"
                conf.group = conf.get("group") or study
            elif kind == "mlflow":
                conf.run_name = conf.get("run_name") or f"{study}-trial-{number}"
                conf.tags = {
                    **(conf.get("tags") or {}),
                    "optuna_study": study,
                    "optuna_trial": str(number),
                }
            # TensorBoard and CSV write into the trial's own run folder already
    return logger_cfg


def close_runs(loggers, status: str) -> None:
    """Close every logger's run (W&B's too: in a sweep the next trial runs in this process and
    must not log into this run)."""
    for lg in loggers:
        try:
            lg.finalize(status)
        except Exception as e:  # closing a logger must not hide the run's own error
            log.warning("Closing logger %s failed: %s", type(lg).__name__, e)
    if any(logger_kind(lg) == "wandb" for lg in loggers):
        import wandb

        wandb.finish(exit_code=0 if status != "failed" else 1)


# ------------------------------------------------------------------ a split's results
def log_split(loggers, report: dict, out: Path, results: dict, classes, threshold) -> None:
    """What each logger gets of an evaluated split, beyond Lightning's metrics: W&B interactive
    confusion matrix, PR and ROC charts (``<split>/confusion_matrix``, ``/pr_curve``,
    ``/roc_curve``) and the report's metrics table; the report's pictures as images under
    ``<split>/figures/`` (W&B, TensorBoard; one media type per key); MLflow the whole report
    folder as artifacts and its headline metrics as ``report/<split>/...``."""
    from cxrlab.evaluation.report import headline

    split = report["split"]
    values = {k: v for k, v in headline(report).items() if v is not None}
    pictures = sorted(out.glob("*.png"))
    for lg in loggers:
        kind = logger_kind(lg)
        if kind == "wandb":
            import wandb

            lg.experiment.log(
                {
                    **_wandb_charts(results, classes, threshold, split),
                    f"{split}/report_metrics": wandb.Table(
                        columns=["metric", "value"],
                        data=[[k, v] for k, v in sorted(values.items())],
                    ),
                    **{f"{split}/figures/{p.stem}": wandb.Image(str(p)) for p in pictures},
                }
            )
        elif kind == "mlflow":
            # the whole report folder (metrics.json, predictions, pictures, model card)
            lg.experiment.log_artifacts(lg.run_id, str(out), artifact_path=out.name)
            lg.log_metrics({f"report/{k}": v for k, v in values.items()})
        elif kind == "tensorboard":
            import matplotlib.image as mpimg

            for p in pictures:
                lg.experiment.add_image(
                    f"{split}/figures/{p.stem}", mpimg.imread(p)[..., :3], dataformats="HWC"
                )


def _wandb_charts(results: dict, classes, threshold, split: str) -> dict:
    import wandb

    y = results["labels"].numpy().tolist()
    probs = results["probs"].numpy()
    if len(classes) == 2 and threshold is not None:
        preds = (probs[:, 1] >= threshold).astype(int).tolist()
    else:
        preds = probs.argmax(1).tolist()
    names = list(classes)
    return {
        f"{split}/confusion_matrix": wandb.plot.confusion_matrix(
            y_true=y, preds=preds, class_names=names, title=f"Confusion matrix ({split})"
        ),
        f"{split}/pr_curve": wandb.plot.pr_curve(
            y, probs, labels=names, title=f"Precision-recall ({split})"
        ),
        f"{split}/roc_curve": wandb.plot.roc_curve(y, probs, labels=names, title=f"ROC ({split})"),
    }


# ------------------------------------------------------------------ explore.py
def log_dataset_report(summary: dict, out: Path, pictures: list[Path], settings: dict) -> None:
    """The summary table and pictures as a W&B run, plus the report folder as a dataset artifact."""
    import wandb

    settings.pop("_target_", None)
    lg = wandb_logger(**settings)
    rows = [
        [s, v["images"], v["patients"], *v["classes"].values()]
        for s, v in summary["run_selection"]["splits"].items()
    ]
    run = lg.experiment
    run.log(
        {
            "splits": wandb.Table(
                columns=["split", "images", "patients", *summary["classes"]], data=rows
            ),
            **{p.stem: wandb.Image(str(p)) for p in pictures},
        }
    )
    art = wandb.Artifact(
        f"{summary['dataset']}-{summary['task']}-report", type="dataset", metadata=summary["index"]
    )
    art.add_dir(str(out))
    run.log_artifact(art)
    wandb.finish()
