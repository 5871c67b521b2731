"""Point metrics on predictions (numpy), binary, multi-class and multi-label.

Binary tasks use the probability of the positive class (index 1) and a decision threshold;
multi-class tasks use argmax and report per-class one-vs-rest values plus macro and micro
averages. A metric that is undefined on the data (AUROC with one class present, PPV with no
positive predictions) is NaN, written as null in JSON, never an exception.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def _safe(fn, *args, **kwargs) -> float:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = float(fn(*args, **kwargs))
        return v
    except ValueError:  # one class only
        return float("nan")


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width confidence bins: sum_b |acc_b - conf_b| * n_b / n."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += abs(correct[m].mean() - conf[m].mean()) * m.sum()
    return float(total / max(len(conf), 1))


def confusion_counts(y: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    return tp, tn, fp, fn


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """``y`` in {0, 1}, ``p`` the positive-class probability; predicted positive if p >= t."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    tp, tn, fp, fn = confusion_counts(y, pred)
    sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
    ppv, npv = _div(tp, tp + fp), _div(tn, tn + fn)
    conf = np.where(pred == 1, p, 1 - p)
    return {
        "auroc": _safe(roc_auc_score, y, p),
        "average_precision": _safe(average_precision_score, y, p) if y.any() else float("nan"),
        "accuracy": _div(tp + tn, len(y)),
        "balanced_accuracy": (sens + spec) / 2,
        "sensitivity": sens,
        "specificity": spec,
        "ppv": ppv,
        "npv": npv,
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(conf, (pred == y).astype(float)),
    }


def multiclass_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Per-class one-vs-rest metrics, macro and micro averages, and overall values."""
    y = np.asarray(y).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    pred = probs.argmax(1)
    onehot = np.eye(k)[y]
    per_class = {}
    tot = np.zeros(4)
    for c in range(k):
        yc, pc = (y == c).astype(int), (pred == c).astype(int)
        tp, tn, fp, fn = confusion_counts(yc, pc)
        tot += (tp, tn, fp, fn)
        sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
        per_class[classes[c]] = {
            "auroc": _safe(roc_auc_score, yc, probs[:, c]),
            "average_precision": (
                _safe(average_precision_score, yc, probs[:, c]) if yc.any() else float("nan")
            ),
            "sensitivity": sens,
            "specificity": spec,
            "ppv": _div(tp, tp + fp),
            "npv": _div(tn, tn + fn),
            "f1": _div(2 * tp, 2 * tp + fp + fn),
            "false_positive_rate": _div(fp, fp + tn),
            "false_negative_rate": _div(fn, fn + tp),
        }
    names = list(next(iter(per_class.values())))
    macro = {
        n: float(np.nanmean([per_class[c][n] for c in classes]))
        if not all(np.isnan(per_class[c][n]) for c in classes)
        else float("nan")
        for n in names
    }
    tp, tn, fp, fn = tot
    micro = {
        "auroc": _safe(roc_auc_score, onehot.ravel(), probs.ravel()),
        "sensitivity": _div(tp, tp + fn),
        "specificity": _div(tn, tn + fp),
        "ppv": _div(tp, tp + fp),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
    }
    conf = probs.max(1)
    return {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(np.nanmean([per_class[c]["sensitivity"] for c in classes])),
        "brier": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
        "ece": expected_calibration_error(conf, (pred == y).astype(float)),
        "macro": macro,
        "micro": micro,
        "per_class": per_class,
    }


def multilabel_metrics(
    y: np.ndarray, probs: np.ndarray, classes: list[str], thresholds=None
) -> dict:
    """Multi-label: ``y`` (N, K) of 1, 0 or NaN (unknown: left out of that finding's metrics),
    ``probs`` (N, K) sigmoid probabilities, ``thresholds`` one per finding (0.5 when None).

    Per finding: AUROC, average precision and, at its threshold, sensitivity, specificity, PPV,
    F1; ``macro``: the mean of the
    findings' values where defined (a finding without positives or negatives has no AUROC and
    is left out of the mean, as in torchxrayvision's and CheXNet's per-finding tables).
    """
    y = np.asarray(y, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    t = np.full(len(classes), 0.5) if thresholds is None else np.asarray(thresholds, dtype=float)
    per: dict[str, dict] = {}
    for k, c in enumerate(classes):
        known = ~np.isnan(y[:, k])
        yk, pk = y[known, k].astype(int), probs[known, k]
        pred = (pk >= t[k]).astype(int)
        tp, tn, fp, fn = confusion_counts(yk, pred)
        per[c] = {
            "auroc": _safe(roc_auc_score, yk, pk),
            "average_precision": (
                _safe(average_precision_score, yk, pk) if yk.any() else float("nan")
            ),
            "sensitivity": _div(tp, tp + fn),
            "specificity": _div(tn, tn + fp),
            "ppv": _div(tp, tp + fp),
            "f1": _div(2 * tp, 2 * tp + fp + fn),
        }

    def mean(key: str) -> float:
        vals = [v[key] for v in per.values() if np.isfinite(v[key])]
        return float(np.mean(vals)) if vals else float("nan")

    macro = {k: mean(k) for k in ("auroc", "average_precision", "sensitivity", "specificity",
                                  "f1")}  # fmt: skip
    return {"macro": macro, "per_finding": per}


def compute(
    y: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    threshold,
    multilabel: bool = False,
):
    """Binary (two classes, with the threshold), multi-class or multi-label metrics
    (``threshold``: one per finding)."""
    if multilabel:
        return multilabel_metrics(y, probs, classes, threshold)
    if len(classes) == 2:
        return binary_metrics(y, probs[:, 1], 0.5 if threshold is None else threshold)
    return multiclass_metrics(y, probs, classes)
