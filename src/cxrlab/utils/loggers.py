"""Logger factories that need more than a constructor call."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

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
