"""Patient-grouped k-fold cross-validation: what each fold leaves, and the summary of K folds.

A fold run (``data.split.folds=K data.split.fold=i``) writes ``oof_predictions.csv``: its best
checkpoint's probabilities on its validation fold, the images no other weights of that run saw.
K fold runs of one configuration together predict every train+val image exactly once, each by
the model that did not train on it. ``summarize(folder)`` finds the fold runs under a folder
(a Hydra multirun, a sweep trial), groups them by configuration (their overrides but the fold)
and writes, per group:

- ``folds.csv``: one row per fold, its validation metrics (the held-out fold) and test metrics;
- ``summary.json`` and ``summary.md``: each metric's mean and standard deviation over folds,
  the folds missing, and the out-of-fold headline with its 95% patient-bootstrap interval;
- ``oof/``: the out-of-fold report (metrics.json, predictions.csv, pictures, model card) in the
  format of every other report.

Train.py's multirun callback writes it at the end of a multirun; ``python -m cxrlab.evaluation.cv
<folder>`` writes it again (after a killed multirun was completed, say).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cxrlab.evaluation.metrics import compute
from cxrlab.evaluation.report import arrays, is_multilabel, write_report
from cxrlab.evaluation.thresholds import choose_per_finding, choose_threshold, parse_policy
from cxrlab.utils.nested import flatten

log = logging.getLogger(__name__)

OOF_FILE = "oof_predictions.csv"
# overrides that do not make a configuration different: the fold, the sweep's bookkeeping
_NOT_CONFIG = (
    "data.split.fold=", "optuna_trial=", "+optuna_trial=", "++optuna_trial=", "hydra.", "paths.",
)  # fmt: skip
# the columns of summary.md (folds.csv has every metric)
_SHOWN = ("auroc", "average_precision", "balanced_accuracy", "sensitivity", "specificity", "f1")


def write_fold_predictions(out_dir: Path, dm, model) -> Path:
    """``oof_predictions.csv`` of a fold run: its validation fold scored by its best checkpoint,
    with the fold number and the threshold chosen on that fold (binary tasks)."""
    from cxrlab.evaluation.report import predictions_frame

    df = predictions_frame(dm, model.results["val"])
    df.insert(3, "fold", dm.fold)
    if getattr(model, "multilabel", False):  # one threshold per finding
        for c, t in zip(dm.classes, model.threshold or [np.nan] * len(dm.classes)):
            df[f"threshold_{c}"] = t
    df["threshold"] = model.threshold if model.num_classes == 2 and not dm.multilabel else np.nan
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / OOF_FILE
    df.to_csv(path, index=False)
    return path


@dataclass
class FoldRun:
    run_dir: Path
    fold: int
    folds: int
    key: tuple[str, ...]
    config: DictConfig


def find_fold_runs(root: Path) -> list[FoldRun]:
    """Every finished fold run (one with ``oof_predictions.csv``) under ``root``."""
    runs = []
    for oof in sorted(Path(root).rglob(OOF_FILE)):
        run = oof.parent
        try:
            cfg = OmegaConf.load(run / ".hydra" / "config.yaml")  # ${seed} and the like resolve
            overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
        except (OSError, yaml.YAMLError, ValueError):
            continue  # not a train.py run folder
        split = OmegaConf.select(cfg, "data.split", default=None) or {}
        if not split.get("folds"):
            continue
        key = tuple(sorted(o for o in overrides if not o.startswith(_NOT_CONFIG)))
        runs.append(FoldRun(run, int(split.get("fold", 0)), int(split["folds"]), key, cfg))
    return runs


def _slug(key: tuple[str, ...]) -> str:
    text = ",".join(o.lstrip("+~") for o in key if not o.startswith("data.split.folds="))
    return re.sub(r"[^A-Za-z0-9=._,-]+", "_", text)[:120] or "default"


def _flat(metrics: dict, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}/{k}": float(v)
        for k, v in flatten(metrics).items()
        if not k.startswith("per_class") and v is not None
    }


def _fold_arrays(df: pd.DataFrame, classes: list[str]):
    """(labels, probabilities, the fold's threshold(s), multi-label?) of a fold's predictions."""
    multi = is_multilabel(df)
    y, probs = arrays(df, classes)
    if multi:
        t = [float(df[f"threshold_{c}"].iloc[0]) for c in classes]
    else:
        t = float(df["threshold"].iloc[0]) if len(classes) == 2 else None
    return y, probs, t, multi


def _classes(df: pd.DataFrame) -> list[str]:
    return [c[len("prob_") :] for c in df.columns if c.startswith("prob_")]


def summarize(
    root: str | Path, n_boot: int | None = None, trials: bool = True, log_result: bool = True
) -> list[Path]:
    """Write the cross-validation summary of every group of fold runs under ``root``; returns
    the summary folders (``root/cv`` for one group, ``root/cv/<overrides>`` for several).
    ``trials=False`` leaves out sweep trials' fold runs (the sweeper summarizes each trial)."""
    root = Path(root)
    groups: dict[tuple[str, ...], list[FoldRun]] = {}
    for run in find_fold_runs(root):
        if trials or not run.config.get("optuna_trial"):
            groups.setdefault(run.key, []).append(run)
    written = []
    for key, runs in groups.items():
        out = root / "cv" if len(groups) == 1 else root / "cv" / _slug(key)
        written.append(_summarize_group(key, runs, out, n_boot, log_result))
    return written


def _summarize_group(key, runs: list[FoldRun], out: Path, n_boot, log_result) -> Path:
    folds = runs[0].folds
    by_fold: dict[int, FoldRun] = {}
    for r in sorted(runs, key=lambda r: r.run_dir.stat().st_mtime):
        by_fold[r.fold] = r  # a fold run twice (resumed elsewhere): the newest counts
    ev = runs[0].config.get("evaluation") or {}
    policy = ev.get("threshold", "youden")
    n_boot = int(ev.get("bootstrap", 1000)) if n_boot is None else int(n_boot)
    seed = int(ev.get("seed", 0))

    rows, parts = [], []
    for fold in sorted(by_fold):
        r = by_fold[fold]
        df = pd.read_csv(r.run_dir / OOF_FILE)
        classes = _classes(df)
        y, probs, t, multi = _fold_arrays(df, classes)
        row = {"fold": fold, "run_dir": str(r.run_dir), "val_images": len(df),
               "val_patients": int(df["patient_id"].nunique()),
               "threshold": None if multi else t}  # fmt: skip
        row.update(_flat(compute(y, probs, classes, t, multilabel=multi), "val"))
        test = r.run_dir / "test_metrics.json"
        if test.is_file():
            row.update({k: v for k, v in json.loads(test.read_text())["metrics"].items()
                        if v is not None})  # fmt: skip
        rows.append(row)
        parts.append(df)
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "folds.csv", index=False)
    metric_cols = [c for c in table.columns if c.startswith(("val/", "test/"))]
    mean = table[metric_cols].mean(numeric_only=True)
    std = table[metric_cols].std(ddof=1, numeric_only=True) if len(table) > 1 else mean * np.nan

    oof = pd.concat(parts, ignore_index=True)
    classes = _classes(oof)
    multi = is_multilabel(oof)
    binary = len(classes) == 2 and not multi
    threshold, chosen = None, None
    if multi:  # each finding's threshold by the runs' policy on the pooled predictions
        name, _ = parse_policy(policy)
        y, probs = arrays(oof, classes)
        threshold = choose_per_finding(y, probs, policy, classes)
        chosen = (
            "fixed" if name == "fixed"
            else "the out-of-fold predictions themselves (thresholded metrics are optimistic)"
        )  # fmt: skip
    if binary:
        name, _ = parse_policy(policy)
        index = {c: i for i, c in enumerate(classes)}
        y = oof["label"].map(index).to_numpy()
        # one operating point for the pooled predictions, by the runs' policy on these same
        # predictions: thresholded out-of-fold metrics are optimistic, AUROC and AP are not
        threshold = choose_threshold(y, oof[f"prob_{classes[1]}"].to_numpy(), policy)
        chosen = (
            "fixed" if name == "fixed"
            else "the out-of-fold predictions themselves (thresholded metrics are optimistic)"
        )  # fmt: skip
    missing = sorted(set(range(folds)) - set(by_fold))
    context = {
        "cross_validation": {
            "folds": folds,
            "done": sorted(by_fold),
            "missing": missing,
            "configuration": list(key),
            "note": "every train+val image predicted once, by the fold model that did not "
            "train on it (its best checkpoint)",
        }
    }
    report = write_report(
        oof.drop(columns=[c for c in oof.columns if c.startswith("threshold")]), classes,
        out / "oof", "oof", threshold, str(policy) if binary or multi else None, n_boot=n_boot, seed=seed, context=context,
    )  # fmt: skip
    if binary or multi:
        report["threshold"]["chosen_on"] = chosen
        (out / "oof" / "metrics.json").write_text(json.dumps(report, indent=2))
    headline = {
        k: v
        for k, v in flatten(report["metrics"]).items()
        if not k.startswith(("per_class", "per_finding")) and k.endswith(("value", "ci95"))
    }
    summary = {
        "folds": folds,
        "done": sorted(by_fold),
        "missing": missing,
        "configuration": list(key),
        "runs": {int(f): str(by_fold[f].run_dir) for f in sorted(by_fold)},
        "mean": {k: _num(v) for k, v in mean.items()},
        "std": {k: _num(v) for k, v in std.items()},
        "oof": {
            "images": report["images"],
            "patients": report["patients"],
            "metrics": _nested_ci(headline),
            "threshold": report["threshold"],
            "report": "oof/metrics.json",
        },  # fmt: skip
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_markdown(summary, table, metric_cols))
    if log_result:
        main = next((k for k in ("val/auroc", "val/macro/auroc") if k in mean),
                    metric_cols[0] if metric_cols else None)  # fmt: skip
        ms = summary["oof"]["metrics"]
        oof_auroc = ms.get("auroc") or ms.get("macro/auroc") or {}
        log.info(
            "Cross-validation, %d of %d folds%s: %s = %.4f +- %.4f over folds; out-of-fold "
            "AUROC %s: %s",
            len(by_fold), folds,
            f" (missing {missing}: run them to complete it)" if missing else "",
            main, mean.get(main, float("nan")), std.get(main, float("nan")),
            _fmt_ci(oof_auroc), out,
        )  # fmt: skip
    return out


def _num(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _nested_ci(flat: dict) -> dict:
    out: dict = {}
    for k, v in flat.items():
        name, _, part = k.rpartition("/")
        out.setdefault(name, {})[part] = v
    return out


def _fmt_ci(entry: dict) -> str:
    v, ci = entry.get("value"), entry.get("ci95") or [None, None]
    if v is None:
        return "undefined"
    if ci[0] is None:
        return f"{v:.3f}"
    return f"{v:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def _markdown(summary: dict, table: pd.DataFrame, cols: list[str]) -> str:
    shown = [c for c in cols if c.rsplit("/", 1)[-1] in _SHOWN and "/micro/" not in c] or cols
    lines = [
        f"# Cross-validation: {len(summary['done'])} of {summary['folds']} folds",
        "",
        "Configuration: `" + (" ".join(summary["configuration"]) or "(defaults)") + "`",
    ]
    if summary["missing"]:
        lines.append(f"\nMissing folds: {summary['missing']} (the summary covers the others).")
    lines += [
        "",
        "Validation metrics are on each fold's held-out fold (its best checkpoint); test "
        "metrics on the test split, held out from every fold.",
        "",
        "| fold | " + " | ".join(shown) + " |",
        "| --- | " + " | ".join("---" for _ in shown) + " |",
    ]
    for _, r in table.iterrows():
        lines.append(f"| {r['fold']} | " + " | ".join(_cell(r.get(c)) for c in shown) + " |")
    lines.append(
        "| mean +- sd | "
        + " | ".join(f"{_cell(summary['mean'][c])} +- {_cell(summary['std'][c])}" for c in shown)
        + " |"
    )
    oof = summary["oof"]
    lines += [
        "",
        f"## Out of fold: {oof['images']} images of {oof['patients']} patients",
        "",
        "Every train+val image scored once, by the fold model that did not train on it; 95% "
        "intervals from patient bootstrap replicates.",
        "",
        "| metric | value (95% CI) |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {_fmt_ci(v)} |" for k, v in oof["metrics"].items()]
    th = oof["threshold"]
    if isinstance(th.get("value"), list):
        values = ", ".join(f"{c} {v:.3f}" for c, v in th["per_finding"].items())
        lines.append(f"\nThresholds: {values} ({th['policy']}, chosen on {th['chosen_on']}).")
    elif th.get("value") is not None:
        lines.append(
            f"\nThreshold {th['value']:.4f} ({th['policy']}, chosen on {th['chosen_on']})."
        )
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


class CrossValidationSummary(Callback):
    """Hydra callback (configs/hydra/train.yaml): at the end of a multirun, the cross-validation
    summary of the fold runs in its folder. Sweep trials are summarized by the sweeper."""

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            summarize(Path(str(config.hydra.sweep.dir)), trials=False)
        except Exception as e:  # a summary must never turn a finished multirun into a failure
            log.warning("Cross-validation summary not written: %s: %s", type(e).__name__, e)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m cxrlab.evaluation.cv",
        description="Write the cross-validation summary of the fold runs under a folder "
        "(a multirun of data.split.fold=range(K), or a sweep trial).",
    )
    parser.add_argument("folder", help="e.g. logs/train/multiruns/2026-11-30_12-00-00")
    parser.add_argument("--bootstrap", type=int, default=None,
                        help="patient bootstrap replicates (default: the runs' evaluation.bootstrap)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = Path(args.folder)
    if not folder.is_dir():
        log.error("%s: no such folder", folder)
        return 2
    written = summarize(folder, args.bootstrap)
    if not written:
        log.error(
            "%s: no finished fold runs (run folders with %s: train.py with data.split.folds=K "
            "writes it)",
            folder,
            OOF_FILE,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
