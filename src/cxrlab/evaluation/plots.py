"""Report pictures (PNG, matplotlib's Agg backend): what people would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(y, pred, classes, split: str, path: Path) -> Path:
    cm = confusion_matrix(y, pred, labels=range(len(classes)))
    with np.errstate(invalid="ignore"):
        norm = cm / cm.sum(1, keepdims=True)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 2 * len(classes), 2 + len(classes)))
    for ax, data, title, fmt in (
        (axes[0], cm, "counts", "d"),
        (axes[1], norm, "row-normalized", ".2f"),
    ):
        ax.imshow(np.nan_to_num(norm), cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                v = data[i, j]
                ax.text(
                    j,
                    i,
                    format(v, fmt) if np.isfinite(v) else "-",
                    ha="center",
                    va="center",
                    color="white" if np.nan_to_num(norm[i, j]) > 0.5 else "black",
                )
        ax.set_xticks(range(len(classes)), classes, rotation=30)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{split}: {title}")
    fig.suptitle("Confusion matrix")
    return _save(fig, path)


def plot_roc_pr(y, p, threshold: float | None, split: str, path: Path, classes=None) -> Path:
    """Binary: one curve with the operating point; multi-class: one-vs-rest curves."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.5))
    curves = (
        [(classes[1] if classes else "positive", y, p)]
        if p.ndim == 1
        else [(c, (y == i).astype(int), p[:, i]) for i, c in enumerate(classes)]
    )
    for name, yc, pc in curves:
        if yc.min() == yc.max():
            continue
        fpr, tpr, _ = roc_curve(yc, pc)
        prec, rec, _ = precision_recall_curve(yc, pc)
        ax1.plot(fpr, tpr, label=name)
        ax2.plot(rec, prec, label=name)
    if threshold is not None and p.ndim == 1 and y.min() != y.max():
        pred = p >= threshold
        tpr_t = (pred & (y == 1)).sum() / max((y == 1).sum(), 1)
        fpr_t = (pred & (y == 0)).sum() / max((y == 0).sum(), 1)
        ppv_t = (pred & (y == 1)).sum() / max(pred.sum(), 1)
        ax1.plot([fpr_t], [tpr_t], "ro", label=f"threshold {threshold:.3f}")
        ax2.plot([tpr_t], [ppv_t], "ro", label=f"threshold {threshold:.3f}")
    ax1.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax1.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC ({split})")
    ax2.set(
        xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=f"Precision-recall ({split})"
    )
    for ax in (ax1, ax2):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right" if ax is ax1 else "lower left", fontsize=8)
    return _save(fig, path)


def plot_calibration(y, probs, split: str, path: Path, bins: int = 10) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if probs.shape[1] == 2:
        yt, pt, label = y, probs[:, 1], "positive class"
    else:
        pred = probs.argmax(1)
        yt, pt, label = (pred == y).astype(int), probs.max(1), "top-label confidence"
    if yt.min() != yt.max():
        frac, mean = calibration_curve(yt, pt, n_bins=bins, strategy="uniform")
        ax.plot(mean, frac, "o-", label=label)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfectly calibrated")
    ax.set(
        xlabel="predicted probability",
        ylabel="observed frequency",
        title=f"Calibration ({split})",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_metrics_vs_threshold(y, p, threshold: float | None, split: str, path: Path) -> Path:
    ts = np.linspace(0, 1, 101)
    pos = p[None, :] >= ts[:, None]
    yy = (y == 1)[None, :]
    tp, fp = (pos & yy).sum(1), (pos & ~yy).sum(1)
    fn, tn = (~pos & yy).sum(1), (~pos & ~yy).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        curves = {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "PPV": tp / (tp + fp),
            "F1": 2 * tp / (2 * tp + fp + fn),
        }
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, v in curves.items():
        ax.plot(ts, v, label=name)
    if threshold is not None:
        ax.axvline(threshold, color="r", ls="--", label=f"chosen {threshold:.3f}")
    ax.set(
        xlabel="threshold", ylabel="value", title=f"Metrics vs threshold ({split})", ylim=(0, 1.02)
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_per_class(per_class: dict, split: str, path: Path) -> Path:
    classes = list(per_class)
    names = ["ppv", "sensitivity", "f1"]
    data = np.array([[per_class[c][n] for n in names] for c in classes], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 1 + 0.6 * len(classes)))
    ax.imshow(np.nan_to_num(data), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(len(classes)):
        for j in range(len(names)):
            ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", color="white")
    ax.set_xticks(range(len(names)), ["precision", "recall", "F1"])
    ax.set_yticks(range(len(classes)), classes)
    ax.set_title(f"Per-class metrics ({split})")
    return _save(fig, path)


def plot_multilabel_roc_pr(y, probs, thresholds, classes, split: str, path: Path) -> Path:
    """Multi-label: a grid, one panel pair (ROC, PR) per finding with its operating point;
    unknown labels (NaN) left out, a finding with one class only marked undefined."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    k = len(classes)
    cols = min(4, k)
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(2 * rows, cols, figsize=(3.2 * cols, 5.6 * rows), squeeze=False)
    for i, c in enumerate(classes):
        roc_ax, pr_ax = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        known = ~np.isnan(y[:, i])
        yk, pk = y[known, i].astype(int), probs[known, i]
        roc_ax.set_title(f"{c} ({int(yk.sum())}/{len(yk)})", fontsize=9)
        if len(yk) == 0 or yk.min() == yk.max():
            for ax in (roc_ax, pr_ax):
                ax.text(0.5, 0.5, "undefined:\none class", ha="center", va="center")
            continue
        fpr, tpr, _ = roc_curve(yk, pk)
        prec, rec, _ = precision_recall_curve(yk, pk)
        roc_ax.plot(fpr, tpr)
        roc_ax.plot([0, 1], [0, 1], ":", color="0.6")
        pr_ax.plot(rec, prec)
        pr_ax.axhline(yk.mean(), ls=":", color="0.6")
        t = thresholds[i] if thresholds is not None else 0.5
        pred = pk >= t
        tp, fp = (pred & (yk == 1)).sum(), (pred & (yk == 0)).sum()
        sens, fpr_t = tp / max(yk.sum(), 1), fp / max((yk == 0).sum(), 1)
        roc_ax.plot([fpr_t], [sens], "o", color="tab:red")
        pr_ax.plot([sens], [tp / max(tp + fp, 1)], "o", color="tab:red")
        roc_ax.set_xlabel("1 - specificity", fontsize=8)
        pr_ax.set_xlabel("recall", fontsize=8)
    for j in range(k, rows * cols):
        axes[2 * (j // cols), j % cols].axis("off")
        axes[2 * (j // cols) + 1, j % cols].axis("off")
    fig.suptitle(f"ROC (upper) and PR (lower) per finding, {split}; dot: the threshold")
    return _save(fig, path)
