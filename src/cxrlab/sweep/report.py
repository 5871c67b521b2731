"""What a sweep leaves in its folder: best.yaml, trials.csv and plots (rewritten as it goes)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState

from cxrlab.sweep.search_space import to_override
from cxrlab.sweep.study import counts, mask
from cxrlab.utils.resolvers import metric_names

log = logging.getLogger(__name__)


def _atomic_write(path: Path, text: str) -> None:
    # several workers may share the folder: never leave a half-written file behind
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def pareto_front(study: optuna.Study) -> list:
    """A multi-objective study's best trials: no other complete trial is at least as good on
    every objective and better on one. Sorted by number."""
    return sorted(study.best_trials, key=lambda t: t.number)


def trials_table(study: optuna.Study, metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per trial, best first: completed by value, then pruned, failed, running.

    A multi-objective study has a ``values.<metric>`` column per objective and ``pareto``
    (on the Pareto front); the front comes first, then the other complete trials."""
    multi = is_multi(study)
    names = metrics or [f"objective_{i}" for i in range(len(study.directions))]
    front = {t.number for t in pareto_front(study)} if multi else set()
    rows = []
    for t in study.get_trials(deepcopy=False):
        last = max(t.intermediate_values) if t.intermediate_values else None
        row = {"number": t.number, "state": t.state.name}
        if multi:
            for name, v in zip(names, t.values or [None] * len(names)):
                row[f"values.{name}"] = v
            row["pareto"] = t.number in front
        else:
            row["value"] = t.value if t.value is not None else t.intermediate_values.get(last)
        row.update(
            {
                "epochs_reported": len(t.intermediate_values),
                "duration_s": t.duration.total_seconds() if t.duration else None,
                **{f"params.{k}": v for k, v in t.params.items()},
                "run_dir": t.user_attrs.get("run_dir"),
                # only a failed trial has a failure reason (a retry starts with none)
                "fail_reason": t.user_attrs.get("fail_reason")
                if t.state == TrialState.FAIL
                else None,
                "retry_of": t.user_attrs.get("retry_of"),
            }
        )
        if "fold_values" in t.user_attrs:  # a cross-validated trial: each fold's value
            row["fold_values"] = t.user_attrs["fold_values"]
        if "duplicate_of" in t.user_attrs:  # asked, found to repeat a trial, never run
            row["state"] = "SKIPPED"
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    order = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 4, "SKIPPED": 5}
    df["_state"] = df["state"].map(order)
    if multi:
        df["_value"] = (~df["pareto"]).astype(int)
    else:
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        df["value"] = pd.to_numeric(df["value"], errors="coerce")
        df["_value"] = -df["value"] if maximize else df["value"]
    df = df.sort_values(["_state", "_value", "number"], na_position="last")
    df = df.drop(columns=["_state", "_value"]).reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    return df


def write_study_report(
    study: optuna.Study,
    out: Path,
    *,
    metric: str | list[str],
    fixed: list[str],
    storage_url: str | None,
    plots: bool,
) -> dict:
    """best.yaml, trials.csv and the plots; ``metric``: the optimized metric's name, or the
    names of a multi-objective study's metrics (a list, in the order of its directions)."""
    out.mkdir(parents=True, exist_ok=True)
    names = metric_names(metric)
    metric = names[0] if len(names) == 1 else metric
    multi = is_multi(study)
    table = trials_table(study, names if len(names) == len(study.directions) else None)
    if not table.empty:
        buf = table.to_csv(index=False)
        _atomic_write(out / "trials.csv", buf)
    what = "validation split; the best checkpoint of each trial"
    if any(t.user_attrs.get("fold_values") for t in study.get_trials(deepcopy=False)):
        what += "; a cross-validated trial's value is the mean over its folds"
    summary: dict = {
        "study": study.study_name,
        "storage": mask(storage_url),
        "direction": (
            [d.name.lower() for d in study.directions] if multi else study.direction.name.lower()
        ),
        "metric": names if multi else f"{metric} ({what})",
        "trials": counts(study),
    }
    if multi:
        summary["values"] = what

    def retrain(trial) -> str:
        overrides = [o for o in fixed if not o.startswith(("hparams_search=", "hydra."))]
        overrides += [to_override(k, v) for k, v in trial.params.items()]
        folds = len(trial.user_attrs.get("fold_values") or [])
        if folds:  # a cross-validated trial: its folds again, and their summary in <dir>/cv
            return f"python train.py -m {' '.join(overrides)} 'data.split.fold=range({folds})'"
        return "python train.py " + " ".join(overrides)

    if multi:
        front = pareto_front(study)
        if front:
            summary["pareto_front"] = [
                {
                    "trial": t.number,
                    "values": dict(zip(names, t.values)),
                    "params": dict(t.params),
                    "run_dir": t.user_attrs.get("run_dir"),
                    "retrain": retrain(t),
                }
                for t in front
            ]
        best = None
    else:
        try:
            best = study.best_trial
        except ValueError:
            best = None
    if best is not None:
        summary.update(
            {
                "best_trial": best.number,
                "best_value": best.value,
                "best_params": dict(best.params),
                "best_run_dir": best.user_attrs.get("run_dir"),
                "retrain": retrain(best),
            }
        )
    _atomic_write(out / "best.yaml", yaml.safe_dump(summary, sort_keys=False))
    if plots:
        write_plots(study, out / "plots", metric)
    return summary


def write_plots(study: optuna.Study, out: Path, metric) -> list[Path]:
    """Optimization history, parameter importances and learning curves, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if is_multi(study):
        return _write_pareto_plot(study, out, metric_names(metric), complete)
    jobs = {"optimization_history": ovm.plot_optimization_history}
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        jobs["intermediate_values"] = ovm.plot_intermediate_values
    if len(complete) >= 2 and complete[0].params:
        jobs["param_importances"] = ovm.plot_param_importances
    written = []
    for name, fn in jobs.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" warnings of optuna's plots
                ax = fn(study, target_name=metric) if name != "intermediate_values" else fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            path = out / f"{name}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
        except Exception as e:  # a plot must never cost the sweep its results
            log.warning("Sweep plot %s not written: %s", name, e)
    return written


def _write_pareto_plot(study: optuna.Study, out: Path, names: list[str], complete) -> list[Path]:
    """A multi-objective study's trials on its first two objectives, the Pareto front marked."""
    import matplotlib.pyplot as plt

    if not complete:
        return []
    try:
        front = {t.number for t in pareto_front(study)}
        fig, ax = plt.subplots(figsize=(7, 5))
        for on, style in ((False, dict(c="0.6", label="trial")),
                          (True, dict(c="tab:red", label="Pareto front"))):  # fmt: skip
            pts = [t for t in complete if (t.number in front) == on]
            if pts:
                ax.scatter([t.values[0] for t in pts], [t.values[1] for t in pts], **style)
                for t in pts:
                    ax.annotate(str(t.number), (t.values[0], t.values[1]), fontsize=8)
        labels = names if len(names) >= 2 else ["objective 0", "objective 1"]
        dirs = [d.name.lower() for d in study.directions]
        ax.set_xlabel(f"{labels[0]} ({dirs[0]})")
        ax.set_ylabel(f"{labels[1]} ({dirs[1]})")
        ax.set_title(f"{study.study_name}: {len(complete)} complete trials (validation split)")
        ax.legend()
        fig.tight_layout()
        path = out / "pareto_front.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return [path]
    except Exception as e:  # a plot must never cost the sweep its results
        log.warning("Sweep plot pareto_front not written: %s", e)
        return []
