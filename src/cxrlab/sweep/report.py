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

log = logging.getLogger(__name__)


def _atomic_write(path: Path, text: str) -> None:
    # several workers may share the folder: never leave a half-written file behind
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, best first: completed by value, then pruned, failed, running."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        last = max(t.intermediate_values) if t.intermediate_values else None
        row = {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.value is not None else t.intermediate_values.get(last),
            "epochs_reported": len(t.intermediate_values),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            **{f"params.{k}": v for k, v in t.params.items()},
            "run_dir": t.user_attrs.get("run_dir"),
            # only a failed trial has a failure reason (a retry starts with none)
            "fail_reason": t.user_attrs.get("fail_reason") if t.state == TrialState.FAIL else None,
            "retry_of": t.user_attrs.get("retry_of"),
        }
        if "duplicate_of" in t.user_attrs:  # asked, found to repeat a trial, never run
            row["state"] = "SKIPPED"
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    order = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 4, "SKIPPED": 5}
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    df["_state"] = df["state"].map(order)
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
    metric: str,
    fixed: list[str],
    storage_url: str | None,
    plots: bool,
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    table = trials_table(study)
    if not table.empty:
        buf = table.to_csv(index=False)
        _atomic_write(out / "trials.csv", buf)
    summary: dict = {
        "study": study.study_name,
        "storage": mask(storage_url),
        "direction": study.direction.name.lower(),
        "metric": f"{metric} (validation split; the best checkpoint of each trial)",
        "trials": counts(study),
    }
    try:
        best = study.best_trial
    except ValueError:
        best = None
    if best is not None:
        overrides = [o for o in fixed if not o.startswith(("hparams_search=", "hydra."))]
        overrides += [to_override(k, v) for k, v in best.params.items()]
        summary.update(
            {
                "best_trial": best.number,
                "best_value": best.value,
                "best_params": dict(best.params),
                "best_run_dir": best.user_attrs.get("run_dir"),
                "retrain": "python train.py " + " ".join(overrides),
            }
        )
    _atomic_write(out / "best.yaml", yaml.safe_dump(summary, sort_keys=False))
    if plots:
        write_plots(study, out / "plots", metric)
    return summary


def write_plots(study: optuna.Study, out: Path, metric: str) -> list[Path]:
    """Optimization history, parameter importances and learning curves, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
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
