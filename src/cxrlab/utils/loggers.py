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


def wandb_logger(offline: bool | str = "auto", save_dir: str = ".", log_model=False, **kwargs):
    """A WandbLogger that never waits on a network it cannot reach.

    ``offline=auto`` runs online only when credentials exist; otherwise the run is written to
    ``<save_dir>/wandb/`` and the command that uploads it later is logged.
    ``log_model``: truthy logs the best checkpoint as a model artifact once the run is tested
    (``log_model_artifact``), with the threshold chosen on validation written into it; not
    Lightning's upload at each save, which would carry the checkpoint before that.
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
    lg = WandbLogger(
        offline=bool(offline), save_dir=save_dir, settings=settings, log_model=False, **kwargs
    )
    lg.cxrlab_log_model = bool(log_model)
    return lg


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


def tracked(loggers) -> bool:
    """Whether a logger takes charts, tables and images (W&B, TensorBoard, MLflow; not CSV)."""
    return any(logger_kind(lg) in ("wandb", "tensorboard", "mlflow") for lg in loggers or [])


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


def name_runs(logger_cfg: DictConfig | None, cfg) -> DictConfig | None:
    """Run name, group and tags from the experiment, the data and the model, where the user
    did not set them: W&B ``<experiment>-<backbone>[-fold<i>]-<run folder>`` grouped by
    experiment (a sweep trial: ``<study>-trial-<n>`` grouped by study), tagged with
    ``data:<source>``, ``model:<backbone>``, ``task:<task>``, ``experiment:<name>``; MLflow the
    same name and those tags. Sweep trials also carry their study and trial number."""
    if not logger_cfg:
        return logger_cfg
    trial = cfg.get("optuna_trial")
    experiment = _experiment_name()
    backbone = str(cfg.model.get("backbone", "model"))
    split = cfg.data.get("split") or {}
    fold = f"-fold{split.get('fold', 0)}" if split.get("folds") else ""
    name = f"{experiment}-{backbone}{fold}-{Path(str(cfg.paths.output_dir)).name}"
    tags = {"data": str(cfg.data.source.name), "model": backbone,
            "task": str(cfg.data.get("task", "binary")), "experiment": experiment}  # fmt: skip
    if trial:
        name = f"{trial.study}-trial-{int(trial.number)}"
        if split.get("folds"):
            name += fold
        tags.update(optuna_study=str(trial.study), optuna_trial=str(int(trial.number)))
    group = str(trial.study) if trial else experiment
    logger_cfg = logger_cfg.copy()
    with open_dict(logger_cfg):
        for conf, kind in _each_config(logger_cfg):
            if kind == "wandb":
                conf.name = conf.get("name") or name
                conf.group = conf.get("group") or group
                conf.tags = [*(conf.get("tags") or []), *(f"{k}:{v}" for k, v in tags.items())]
            elif kind == "mlflow":
                conf.run_name = conf.get("run_name") or name
                conf.tags = {**tags, **(conf.get("tags") or {})}
            # TensorBoard and CSV write into the run's own folder already
    return logger_cfg


def _experiment_name() -> str:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("experiment")
        if choice:
            return str(choice)
    return "default"


def close_runs(loggers, status: str, summary: dict | None = None) -> None:
    """Close every logger's run (W&B's too: in a sweep the next trial runs in this process and
    must not log into this run). ``status``: success, finished (a pruned trial) or failed; a
    pruned or failed W&B run is tagged so (``pruned``, ``failed``: filter them out of a
    dashboard) and its summary has ``run/state``; ``summary`` adds values to every run
    (the best checkpoint's monitored value, a trial's objective)."""
    state = {"success": "finished", "finished": "pruned", "failed": "failed"}.get(status, status)
    for lg in loggers:
        try:
            if logger_kind(lg) == "wandb" and lg._experiment is not None:
                run = lg.experiment
                run.summary.update({**(summary or {}), "run/state": state})
                if state != "finished":
                    run.tags = (*run.tags, state)
            elif logger_kind(lg) == "mlflow" and summary:
                lg.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
        except Exception as e:
            log.warning("Marking the %s run %s failed: %s", type(lg).__name__, state, e)
    for lg in loggers:
        try:
            lg.finalize(status)
        except Exception as e:  # closing a logger must not hide the run's own error
            log.warning("Closing logger %s failed: %s", type(lg).__name__, e)
    if any(logger_kind(lg) == "wandb" for lg in loggers):
        import wandb

        wandb.finish(exit_code=0 if status != "failed" else 1)


# ------------------------------------------------------------------ a split's results
def log_split(
    loggers, report: dict, out: Path, results: dict, classes, threshold, tables=None
) -> None:
    """What each logger gets of an evaluated split, beyond Lightning's metrics.

    W&B: interactive confusion matrix, PR and ROC charts (``<split>/confusion_matrix``,
    ``/pr_curve``, ``/roc_curve``), the report's metrics with their intervals
    (``<split>/report_metrics``: scope, metric, value, ci95_low, ci95_high), the threshold and
    its policy in the summary, the prediction and worst-error tables with images
    (``<split>/predictions``, ``<split>/worst_errors``) and the report's pictures as images
    under ``<split>/figures/`` (one media type per key). TensorBoard: the pictures, the worst
    errors' overlays, the tables as text. MLflow: the whole report folder as artifacts, its
    headline metrics as ``report/<split>/...``, the tables as JSON artifacts and the overlays
    as images. ``tables``: ``cxrlab.utils.tracking`` frames by name (None: none)."""
    from cxrlab.evaluation.report import headline
    from cxrlab.utils.tracking import metric_rows

    split = report["split"]
    values = {k: v for k, v in headline(report).items() if v is not None} if rows_of(report) else {}
    pictures = sorted(out.glob("*.png")) if out is not None else []
    rows = metric_rows(report) if rows_of(report) else []
    tables = {k: v for k, v in (tables or {}).items() if v is not None and len(v)}
    th = report.get("threshold") or {}
    for lg in loggers:
        kind = logger_kind(lg)
        if kind == "wandb":
            import wandb

            run = lg.experiment
            content = {f"{split}/{name}": _wandb_table(df) for name, df in tables.items()}
            if rows:
                content[f"{split}/report_metrics"] = wandb.Table(
                    columns=["scope", "metric", "value", "ci95_low", "ci95_high"], data=rows
                )
            if results is not None:
                content.update(_wandb_charts(results, classes, threshold, split))
            content.update({f"{split}/figures/{p.stem}": wandb.Image(str(p)) for p in pictures})
            run.log(content)
            if th.get("value") is not None:
                run.summary.update({f"{split}/threshold": th["value"],
                                    f"{split}/threshold_policy": th.get("policy")})  # fmt: skip
        elif kind == "mlflow":
            client, run_id = lg.experiment, lg.run_id
            if out is not None:
                # the whole report folder (metrics.json, predictions, pictures, model card)
                client.log_artifacts(run_id, str(out), artifact_path=out.name)
            if values:
                lg.log_metrics({f"report/{k}": v for k, v in values.items()})
            for name, df in tables.items():
                plain = df.drop(columns=["image", "gradcam"], errors="ignore")
                client.log_table(run_id, data=plain, artifact_file=f"{split}/{name}.json")
                if "gradcam" in df:
                    for i, r in enumerate(df.itertuples()):
                        client.log_image(run_id, r.gradcam,
                                         artifact_file=f"{split}/{name}/{i:02d}_{r.row}.png")  # fmt: skip
        elif kind == "tensorboard":
            import matplotlib.image as mpimg

            writer = lg.experiment
            for p in pictures:
                writer.add_image(f"{split}/figures/{p.stem}", mpimg.imread(p)[..., :3],
                                 dataformats="HWC")  # fmt: skip
            if rows:
                writer.add_text(f"{split}/report_metrics", _markdown(
                    pd_frame(rows, ["scope", "metric", "value", "ci95_low", "ci95_high"])))  # fmt: skip
            for name, df in tables.items():
                writer.add_text(f"{split}/{name}",
                                _markdown(df.drop(columns=["image", "gradcam"], errors="ignore")))  # fmt: skip
                if "gradcam" in df and len({g.shape for g in df["gradcam"]}) == 1:
                    import numpy as np

                    writer.add_images(f"{split}/{name}", np.stack(list(df["gradcam"])),
                                      dataformats="NHWC")  # fmt: skip


def rows_of(report: dict) -> bool:
    return bool(report.get("metrics"))


def pd_frame(rows, columns):
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def _markdown(df) -> str:
    """A table as markdown for TensorBoard's text tab (at most 100 rows)."""
    df = df.head(100)
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _wandb_table(df):
    """A W&B Table of a tracking frame: its image columns as W&B images, first."""
    import wandb

    media = [c for c in ("image", "gradcam") if c in df]
    cols = [*media, *(c for c in df.columns if c not in media)]
    table = wandb.Table(columns=cols)
    for r in df[cols].itertuples(index=False):
        r = list(r)
        table.add_data(
            *(wandb.Image(v) for v in r[: len(media)]), *(_plain(v) for v in r[len(media) :])
        )
    return table


def _plain(v):
    """numpy scalars as Python values (W&B tables serialize those)."""
    return v.item() if hasattr(v, "item") else v


def _wandb_charts(results: dict, classes, threshold, split: str) -> dict:
    import numpy as np
    import wandb

    from cxrlab.utils.tracking import predictions

    y, probs, pred = predictions(results, list(classes), threshold)
    if np.ndim(y) == 2:  # multi-label: each finding's ROC and PR, its labelled images only
        out = {}
        for k, c in enumerate(classes):
            known = ~np.isnan(y[:, k])
            yk = y[known, k].astype(int)
            if len(yk) == 0 or yk.min() == yk.max():
                continue  # undefined with one class
            two = np.stack([1 - probs[known, k], probs[known, k]], 1)
            names = [f"not {c}", c]
            out[f"{split}/pr_curve/{c}"] = wandb.plot.pr_curve(
                yk.tolist(), two, labels=names, classes_to_plot=[1], title=f"{c}: PR ({split})"
            )
            out[f"{split}/roc_curve/{c}"] = wandb.plot.roc_curve(
                yk.tolist(), two, labels=names, classes_to_plot=[1], title=f"{c}: ROC ({split})"
            )
        return out
    y, preds, names = y.tolist(), pred.tolist(), list(classes)
    return {
        f"{split}/confusion_matrix": wandb.plot.confusion_matrix(
            y_true=y, preds=preds, class_names=names, title=f"Confusion matrix ({split})"
        ),
        f"{split}/pr_curve": wandb.plot.pr_curve(
            y, probs, labels=names, title=f"Precision-recall ({split})"
        ),
        f"{split}/roc_curve": wandb.plot.roc_curve(y, probs, labels=names, title=f"ROC ({split})"),
    }


def log_epoch_charts(loggers, results: dict, classes, epoch: int, global_step: int) -> None:
    """A validation's confusion matrix (at 0.5 for binary tasks: the threshold is chosen after
    training), ROC and PR curves, with the epoch as step: W&B charts under ``val/...`` (their
    step metric is ``epoch``); TensorBoard PR curves per class and the pictures; MLflow the
    pictures under ``val/epoch_<e>/``."""
    import tempfile

    import numpy as np

    from cxrlab.evaluation import plots
    from cxrlab.utils.tracking import predictions

    classes = list(classes)
    y, probs, pred = predictions(results, classes, None)
    multi = np.ndim(y) == 2
    pictures: dict[str, Path] = {}
    tmp = None
    if any(logger_kind(lg) in ("tensorboard", "mlflow") for lg in loggers):
        tmp = tempfile.TemporaryDirectory()
        d = Path(tmp.name)
        split = f"val, epoch {epoch}"
        if multi:
            pictures["roc_pr"] = plots.plot_multilabel_roc_pr(y, probs, None, classes, split,
                                                              d / "roc_pr.png")  # fmt: skip
        else:
            pictures["confusion_matrix"] = plots.plot_confusion(
                y, pred, classes, split, d / "confusion_matrix.png"
            )
            score = probs[:, 1] if len(classes) == 2 else probs
            pictures["roc_pr"] = plots.plot_roc_pr(y, score, None, split, d / "roc_pr.png",
                                                   classes=classes)  # fmt: skip
    try:
        for lg in loggers:
            kind = logger_kind(lg)
            if kind == "wandb":
                run = lg.experiment
                charts = _wandb_charts(results, classes, None, "val")
                for key in charts:
                    run.define_metric(key, step_metric="epoch")
                run.log({**charts, "epoch": epoch, "trainer/global_step": global_step})
            elif kind == "tensorboard":
                import matplotlib.image as mpimg

                writer = lg.experiment
                for i, c in enumerate(classes):
                    if multi:
                        known = ~np.isnan(y[:, i])
                        labels, scores = y[known, i] == 1, probs[known, i]
                    else:
                        labels, scores = y == i, probs[:, i]
                    writer.add_pr_curve(f"val/pr_curve/{c}", labels, scores, global_step=epoch)
                for name, p in pictures.items():
                    writer.add_image(f"val/{name}", mpimg.imread(p)[..., :3], global_step=epoch,
                                     dataformats="HWC")  # fmt: skip
            elif kind == "mlflow":
                for p in pictures.values():
                    lg.experiment.log_artifact(lg.run_id, str(p), f"val/epoch_{epoch:03d}")
    finally:
        if tmp is not None:
            tmp.cleanup()


# ------------------------------------------------------------------ artifacts
def log_dataset_artifact(loggers, splits_csv: Path, name: str, metadata: dict) -> None:
    """The run's data selection (``splits.csv``: each image's split, fold, unreadable reason)
    as a W&B dataset artifact the run outputs, and an MLflow artifact."""
    for lg in loggers:
        kind = logger_kind(lg)
        if kind == "wandb":
            import wandb

            art = wandb.Artifact(name, type="dataset", metadata=metadata,
                                 description="the run's images, patients, splits and folds")  # fmt: skip
            art.add_file(str(splits_csv), name="splits.csv")
            lg.experiment.log_artifact(art)
        elif kind == "mlflow":
            lg.experiment.log_artifact(lg.run_id, str(splits_csv))


def log_model_artifact(loggers, ckpt: str | None, card: Path | None, metadata: dict) -> None:
    """The tested checkpoint (threshold included) as a W&B model artifact ``model-<run id>``
    with aliases ``best`` and ``latest``, the model card beside it and the weights' provenance,
    threshold and test metrics in its metadata: when ``logger.wandb.log_model`` asks for it."""
    if not ckpt:
        return
    for lg in loggers:
        if logger_kind(lg) != "wandb" or not getattr(lg, "cxrlab_log_model", False):
            continue
        import wandb

        run = lg.experiment
        meta = dict(metadata)
        if card is not None and card.is_file():
            meta["model_card"] = card.read_text()
        art = wandb.Artifact(f"model-{run.id}", type="model", metadata=_jsonable(meta))
        art.add_file(str(ckpt), name="model.ckpt")
        if card is not None and card.is_file():
            art.add_file(str(card), name="model_card.md")
        run.log_artifact(art, aliases=["best", "latest"])
        log.info("W&B: the tested checkpoint logged as model artifact model-%s (best, latest)",
                 run.id)  # fmt: skip


def _jsonable(v):
    import json

    return json.loads(json.dumps(v, default=str))


# ------------------------------------------------------------------ a sweep's study
def log_study_summary(logger_cfg, study_name: str, table, summary: dict, out: Path) -> None:
    """When the sweep's trials log to W&B: one more run in the study's group,
    ``<study>-summary`` (job type ``optuna-study``), with every trial's number, state, value(s)
    and parameters as the table ``study/trials`` and the best trial (or the Pareto front) in
    its summary; the trials' own runs carry their parameters in their config and their value
    as ``optuna/value``, which W&B's parallel-coordinates panel plots across the group."""
    from omegaconf import OmegaConf

    confs = [c for c, kind in _each_config(logger_cfg) if kind == "wandb"] if logger_cfg else []
    if not confs or table is None or table.empty:
        return
    import hashlib

    import wandb

    conf = confs[0]
    # one W&B run per study: each sweep command resumes it (offline: one folder per command,
    # the same run once synced)
    run_id = "study-" + hashlib.sha1(f"{out}:{study_name}".encode()).hexdigest()[:16]
    lg = wandb_logger(
        id=run_id,
        resume="allow",
        offline=OmegaConf.select(conf, "offline", default="auto"),
        save_dir=str(out),
        project=OmegaConf.select(conf, "project", default="cxrlab"),
        name=f"{study_name}-summary",
        group=study_name,
        job_type="optuna-study",
        tags=["optuna-study", f"optuna_study:{study_name}"],
    )  # fmt: skip
    run = lg.experiment
    run.config.update({"study": study_name, "direction": summary.get("direction"),
                       "metric": summary.get("metric")}, allow_val_change=True)  # fmt: skip
    plain = table.astype(object).where(table.notna(), None)
    run.log({"study/trials": wandb.Table(dataframe=plain)})
    keys = ("best_trial", "best_value", "best_params", "trials")
    run.summary.update({f"study/{k}": _jsonable(summary[k]) for k in keys if k in summary})
    if "pareto_front" in summary:
        run.summary["study/pareto_front"] = [p["trial"] for p in summary["pareto_front"]]
    wandb.finish()


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
