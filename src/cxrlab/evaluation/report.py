"""The evaluation report: the same files whether written by train.py's test phase or eval.py.

``write_report(predictions, classes, ...)`` takes per-image probabilities (a DataFrame with
``path``, ``patient_id``, ``label`` and ``prob_<class>`` columns) and writes into ``out_dir``:
``metrics.json`` (point values with 95% patient-level bootstrap intervals, the split, its image
and patient counts, the threshold and how it was chosen), ``predictions.csv``, the pictures and
``model_card.md``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.evaluation import plots
from cxrlab.evaluation.bootstrap import patient_bootstrap
from cxrlab.evaluation.metrics import compute

log = logging.getLogger(__name__)

PICTURES = (
    "confusion_matrix.png",
    "roc_pr.png",
    "calibration.png",
    "metrics_vs_threshold.png",
    "per_class.png",
)


def _clean(v):
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _with_ci(point: dict, ci: dict[str, tuple[float, float]], prefix: str = "") -> dict:
    out = {}
    for k, v in point.items():
        if isinstance(v, dict):
            out[k] = _with_ci(v, ci, f"{prefix}{k}/")
        else:
            lo, hi = ci.get(f"{prefix}{k}", (float("nan"), float("nan")))
            out[k] = {"value": v, "ci95": [lo, hi]}
    return out


def is_multilabel(predictions: pd.DataFrame) -> bool:
    """A multi-label prediction table has a ``y_<finding>`` column per finding."""
    return any(str(c).startswith("y_") for c in predictions.columns)


def arrays(predictions: pd.DataFrame, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if is_multilabel(predictions):
        y = predictions[[f"y_{c}" for c in classes]].to_numpy(dtype=np.float64)
        return y, predictions[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
    index = {c: i for i, c in enumerate(classes)}
    y = predictions["label"].map(index).to_numpy()
    probs = predictions[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
    return y, probs


def _point_and_ci(metrics, predictions: pd.DataFrame, n_boot: int, seed: int):
    """``metrics(rows)`` on every row, and its 95% patient-bootstrap intervals."""
    point = metrics(np.arange(len(predictions)))
    ci = patient_bootstrap(metrics, predictions["patient_id"].to_numpy(), n_boot=n_boot, seed=seed)
    return point, ci


def write_report(
    predictions: pd.DataFrame,
    classes: list[str],
    out_dir: str | Path,
    split: str,
    threshold: float | None = None,
    threshold_policy: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    context: dict | None = None,
) -> dict:
    """Write the report; returns the content of metrics.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_multilabel(predictions):
        return _write_multilabel_report(
            predictions, classes, out, split, threshold, threshold_policy, n_boot, seed, context
        )
    y, probs = arrays(predictions, classes)
    binary = len(classes) == 2
    t = (0.5 if threshold is None else float(threshold)) if binary else None
    point, ci = _point_and_ci(lambda r: compute(y[r], probs[r], classes, t), predictions,
                              n_boot, seed)  # fmt: skip
    pred = (probs[:, 1] >= t).astype(int) if binary else probs.argmax(1)
    preds = predictions.copy()
    preds["prediction"] = [classes[i] for i in pred]
    preds.to_csv(out / "predictions.csv", index=False)

    report = {
        "split": split,
        "images": int(len(predictions)),
        "patients": int(predictions["patient_id"].nunique()),
        "class_counts": {c: int((y == i).sum()) for i, c in enumerate(classes)},
        "classes": list(classes),
        "task": "binary" if binary else "multiclass",
        "threshold": (
            {
                "value": t,
                "policy": threshold_policy or "fixed=0.5",
                "chosen_on": "val"
                if threshold_policy and not str(threshold_policy).startswith("fixed")
                else "fixed",
            }
            if binary
            else {"value": None, "policy": "argmax"}
        ),
        "bootstrap": {"replicates": n_boot, "unit": "patient", "level": 0.95, "seed": seed},
        "metrics": _with_ci(point, ci),
        **(context or {}),
    }
    report = _clean(report)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))

    plots.plot_confusion(y, pred, classes, split, out / "confusion_matrix.png")
    plots.plot_calibration(y, probs, split, out / "calibration.png")
    if binary:
        plots.plot_roc_pr(y, probs[:, 1], t, split, out / "roc_pr.png", classes=classes)
        plots.plot_metrics_vs_threshold(y, probs[:, 1], t, split, out / "metrics_vs_threshold.png")
    else:
        plots.plot_roc_pr(y, probs, None, split, out / "roc_pr.png", classes=classes)
        plots.plot_per_class(point["per_class"], split, out / "per_class.png")
    write_model_card(report, out / "model_card.md")
    return report


def _write_multilabel_report(
    predictions, classes, out, split, thresholds, policy, n_boot, seed, context
) -> dict:
    """The multi-label report: per-finding AUROC, AP and thresholded metrics with patient
    bootstrap CIs, their macro means, the per-finding thresholds, a ROC/PR grid."""
    from cxrlab.evaluation.metrics import multilabel_metrics

    y, probs = arrays(predictions, classes)
    t = [0.5] * len(classes) if thresholds is None else [float(v) for v in thresholds]
    point, ci = _point_and_ci(
        lambda r: multilabel_metrics(y[r], probs[r], classes, t), predictions, n_boot, seed
    )
    preds = predictions.copy()
    preds["prediction"] = ["|".join(c for c, hit in zip(classes, row) if hit)
                           for row in probs >= np.asarray(t)]  # fmt: skip
    preds.to_csv(out / "predictions.csv", index=False)
    chosen = "val" if policy and not str(policy).startswith("fixed") else "fixed"
    report = {
        "split": split,
        "images": int(len(predictions)),
        "patients": int(predictions["patient_id"].nunique()),
        # images showing each finding, and images labelled for it (unknown labels left out)
        "class_counts": {c: int(np.nansum(y[:, k])) for k, c in enumerate(classes)},
        "labelled_counts": {c: int((~np.isnan(y[:, k])).sum()) for k, c in enumerate(classes)},
        "classes": list(classes),
        "task": "multilabel",
        "threshold": {
            "value": t,
            "per_finding": dict(zip(classes, t)),
            "policy": policy or "fixed=0.5",
            "chosen_on": chosen,
        },
        "bootstrap": {"replicates": n_boot, "unit": "patient", "level": 0.95, "seed": seed},
        "metrics": _with_ci(point, ci),
        **(context or {}),
    }
    report = _clean(report)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    plots.plot_multilabel_roc_pr(y, probs, t, classes, split, out / "roc_pr.png")
    plots.plot_per_class(point["per_finding"], split, out / "per_class.png")
    write_model_card(report, out / "model_card.md")
    return report


def headline(report: dict) -> dict[str, float | None]:
    """Flat ``{split/metric: value}`` (overall, macro and micro; no per-class) for loggers."""
    out: dict[str, float | None] = {}

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            if "value" in v:
                out[f"{prefix}{k}"] = v["value"]
            elif k != "per_class":
                walk(v, f"{prefix}{k}/")

    walk(report["metrics"], f"{report['split']}/")
    return out


def _fmt(entry) -> str:
    v, (lo, hi) = entry["value"], entry["ci95"]
    if v is None:
        return "undefined"
    if lo is None:
        return f"{v:.3f}"
    return f"{v:.3f} ({lo:.3f}-{hi:.3f})"


def _per_row_table(head: list[str], lead: dict, metrics: dict, keys) -> list[str]:
    """Markdown rows: a class's (or finding's) leading cells, then its metrics with CIs."""
    lines = ["", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for c, cells in lead.items():
        values = [str(v) for v in cells] + [_fmt(metrics[c][k]) for k in keys]
        lines.append(f"| {c} | " + " | ".join(values) + " |")
    return lines


def write_model_card(report: dict, path: Path) -> None:
    m = report["metrics"]
    lines = [
        "# Model card",
        "",
        f"Task: {report['task']} classification of chest radiographs into "
        f"{', '.join(report['classes'])}.",
    ]
    if report.get("model"):
        lines.append(f"Model: {report['model']}.")
    if "pretrained" in report:
        from cxrlab.models.weights import describe

        lines.append(f"Started from: {describe(report['pretrained'])}.")
    if report.get("data"):
        lines += [
            "",
            "## Data and splits",
            "",
            "| split | images | patients | " + " | ".join(report["classes"]) + " |",
            "| --- | --- | --- | " + " | ".join("---" for _ in report["classes"]) + " |",
        ]
        for s, d in report["data"].items():
            lines.append(
                f"| {s} | {d['images']} | {d['patients']} | "
                + " | ".join(str(d["classes"].get(c, 0)) for c in report["classes"])
                + " |"
            )
        lines.append("\nSplits are grouped by patient: no patient is in two splits.")
    th = report["threshold"]
    lines += ["", "## Decision threshold", ""]
    if report["task"] == "multilabel":
        lines.append(
            f"One threshold per finding, policy `{th['policy']}`, chosen on the "
            f"{th['chosen_on']} split: "
            + ", ".join(f"{c} {v:.3f}" for c, v in th["per_finding"].items())
            + f". Applied unchanged to the {report['split']} split."
        )
    elif report["task"] == "binary":
        lines.append(
            f"Policy `{th['policy']}`, chosen on the {th['chosen_on']} split: "
            f"predict {report['classes'][1]} when its probability is >= {th['value']:.4f}. "
            f"Applied unchanged to the {report['split']} split."
        )
    else:
        lines.append("The class with the highest probability (argmax).")
    lines += [
        "",
        f"## Metrics on the {report['split']} split",
        "",
        f"{report['images']} images of {report['patients']} patients. 95% confidence "
        f"intervals from {report['bootstrap']['replicates']} bootstrap replicates that "
        "resample patients, not images.",
        "",
        "| metric | value (95% CI) |",
        "| --- | --- |",
    ]
    if report["task"] == "multilabel":
        for k, v in m["macro"].items():
            lines.append(f"| macro {k} | {_fmt(v)} |")
        lines += _per_row_table(
            ["finding", "images with it", "AUROC", "average precision", "sensitivity",
             "specificity"],
            {c: [report["class_counts"].get(c, 0)] for c in m["per_finding"]},
            m["per_finding"], ("auroc", "average_precision", "sensitivity", "specificity"),
        )  # fmt: skip
    elif report["task"] == "binary":
        for k, v in m.items():
            lines.append(f"| {k} | {_fmt(v)} |")
    else:
        for k in ("accuracy", "balanced_accuracy", "brier", "ece"):
            lines.append(f"| {k} | {_fmt(m[k])} |")
        for avg in ("macro", "micro"):
            for k, v in m[avg].items():
                lines.append(f"| {avg} {k} | {_fmt(v)} |")
        lines += _per_row_table(
            ["class", "AUROC", "sensitivity", "specificity", "PPV", "FPR", "FNR"],
            {c: [] for c in m["per_class"]},
            m["per_class"],
            ("auroc", "sensitivity", "specificity", "ppv", "false_positive_rate",
             "false_negative_rate"),
        )  # fmt: skip
    lines += [
        "",
        "## Intended use and limits",
        "",
        "A research model. It is not a medical device and must not be used for diagnosis. "
        "Its metrics hold for data like its test split (same sources, views and population); "
        "validate it on data from the site where it would be used before drawing any "
        "conclusion. Calibration and the threshold may shift with prevalence.",
        "",
    ]
    pictures = [p for p in PICTURES if (path.parent / p).exists()]
    lines += [f"![{p[:-4]}]({p})" for p in pictures]
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------ a model's split, reported
def predictions_frame(dm, results: dict) -> pd.DataFrame:
    """Per-image probabilities of a stage, joined with the manifest (path, patient, label)."""
    rows = results["rows"].numpy()
    df = dm.manifest.iloc[rows][["path", "patient_id", "label"]].reset_index(drop=True)
    probs = results["probs"].numpy()
    if getattr(dm, "multilabel", False):  # each finding's label: 1, 0 or blank (unknown)
        labels = results["labels"].numpy()
        for i, c in enumerate(dm.classes):
            df[f"y_{c}"] = labels[:, i]
    for i, c in enumerate(dm.classes):
        df[f"prob_{c}"] = probs[:, i]
    return df


def write_split_report(out: Path, dm, model, split: str, ev, ckpt) -> dict:
    """The report of ``split`` from the predictions the model collected on it (train.py's test
    phase and eval.py both write it this way)."""
    context = {
        "checkpoint": ckpt,
        "model": model.hparams.get("backbone"),
        "pretrained": model.pretrained_weights,
        "data": dm.describe(),
        "skipped_unreadable": len(dm.skipped),
        "left_out_by_source": dict(dm.dropped),  # {reason: images}, before subset and split
    }
    return write_report(
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
