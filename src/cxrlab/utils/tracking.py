"""What the experiment trackers show beyond Lightning's metrics, built once for every logger.

- each validation during training: the confusion matrix, ROC and PR curves of that epoch
  (``TrackingCallback``);
- after testing, for the validation split (the best checkpoint's predictions) and the test
  split: a prediction table with each image as the network saw it (the preprocessed uint8
  input), label, probabilities, prediction at the run's threshold, patient and file; the worst
  false negatives and false positives with Grad-CAM overlays; the per-class metrics with the
  report's confidence intervals.

This module chooses rows and builds images (no logger-specific line); ``cxrlab.utils.loggers``
hands them to W&B, TensorBoard and MLflow in each one's format. Settings: ``tracking.*``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pytorch_lightning as pl

from cxrlab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class TrackingSettings:
    # the validation confusion matrix, ROC and PR curves logged every epoch (epoch as the step)
    epoch_charts: bool = True
    # prediction tables of the validation and test splits: at most this many rows each (a
    # seeded sample when the split is larger; 0: no tables)
    table_rows: int = 200
    # this many worst false negatives and false positives (binary; most confident errors for
    # multi-class), each with its Grad-CAM overlay (0: none)
    worst: int = 8
    # table images are at most this many pixels a side (the preprocessed input, shrunk)
    thumbnail: int = 128
    seed: int = 0

    def __post_init__(self):
        for key in ("table_rows", "worst", "thumbnail", "seed"):
            v = getattr(self, key)
            if (
                isinstance(v, bool)
                or not isinstance(v, int)
                or v < (1 if key == "thumbnail" else 0)
            ):
                raise ConfigError(
                    f"tracking.{key}={v!r}: use a whole number "
                    f"{'>= 1' if key == 'thumbnail' else '>= 0'}"
                )
        if not isinstance(self.epoch_charts, bool):
            raise ConfigError(f"tracking.epoch_charts={self.epoch_charts!r}: use true or false")

    def to_dict(self) -> dict:
        return asdict(self)


def predictions(results: dict, classes: list[str], threshold: float | None) -> tuple:
    """(labels, probabilities, predicted class indices) of a stage's collected results; binary
    predictions use ``threshold`` (0.5 before one is chosen), multi-class the argmax;
    multi-label: labels (N, K) with NaN unknown, predictions (N, K) 0/1 at each finding's
    threshold."""
    y = results["labels"].numpy()
    probs = results["probs"].numpy().astype(np.float64)
    if y.ndim == 2:  # multi-label: (N, K) findings at each finding's threshold
        t = np.full(len(classes), 0.5) if threshold is None else np.asarray(threshold, float)
        return y, probs, (probs >= t).astype(int)
    if len(classes) == 2:
        pred = (probs[:, 1] >= (0.5 if threshold is None else threshold)).astype(int)
    else:
        pred = probs.argmax(1)
    return y, probs, pred


def thumbnail(img: np.ndarray, size: int) -> np.ndarray:
    if max(img.shape[:2]) <= size:
        return img
    import cv2

    scale = size / max(img.shape[:2])
    shape = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    return cv2.resize(img, shape, interpolation=cv2.INTER_AREA)


def prediction_table(dm, results: dict, classes, threshold, settings: TrackingSettings):
    """The table's rows: manifest row, path, patient, label, probabilities, prediction, correct
    and ``image`` (the cached, preprocessed uint8 input). At most ``settings.table_rows``."""
    if not settings.table_rows:
        return None
    y, probs, pred = predictions(results, classes, threshold)
    rows = results["rows"].numpy()
    order = np.arange(len(rows))
    if len(order) > settings.table_rows:
        rng = np.random.default_rng(settings.seed)
        order = np.sort(rng.choice(len(order), settings.table_rows, replace=False))
    return _frame(dm, rows[order], y[order], probs[order], pred[order], classes, settings)


def _names(row, classes) -> str:
    return "|".join(c for c, v in zip(classes, row) if v == 1)


def _frame(dm, rows, y, probs, pred, classes, settings) -> pd.DataFrame:
    m = dm.manifest
    multi = np.ndim(y) == 2
    df = pd.DataFrame(
        {
            "row": rows.astype(int),
            "path": m["path"].to_numpy()[rows],
            "patient_id": m["patient_id"].astype(str).to_numpy()[rows],
            "label": [_names(r, classes) for r in y] if multi else [classes[i] for i in y],
        }
    )
    for i, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, i]
    if multi:
        df["prediction"] = [_names(r, classes) for r in pred]
        known = ~np.isnan(y)
        df["correct"] = ((np.nan_to_num(y) == pred) | ~known).all(1)
    else:
        df["prediction"] = [classes[i] for i in pred]
        df["correct"] = df["label"] == df["prediction"]
    images = dm.dataset("test").cache.images  # every split shares the one cache
    df["image"] = [thumbnail(np.asarray(images[r]), settings.thumbnail) for r in rows]
    return df


def worst_errors(dm, model, results: dict, classes, threshold, settings: TrackingSettings):
    """The ``settings.worst`` most confident false negatives and false positives (binary: the
    lowest positive-class probabilities among positives called negative, the highest among
    negatives called positive; multi-class: the most confident wrong predictions), with a
    ``kind`` column and ``gradcam``: the overlay of the map for the positive class (binary) or
    the predicted class, on the network's input."""
    if not settings.worst:
        return None
    y, probs, pred = predictions(results, classes, threshold)
    rows = results["rows"].numpy()
    picks: list[tuple[str, int]] = []
    target: list[int] = []
    if np.ndim(y) == 2:  # multi-label: (image, finding) pairs, Grad-CAM of that finding
        fn_i, fn_k = np.nonzero((y == 1) & (pred == 0))
        fp_i, fp_k = np.nonzero((y == 0) & (pred == 1))
        for kind, ii, kk, order in (
            ("false negative", fn_i, fn_k, np.argsort(probs[fn_i, fn_k], kind="stable")),
            ("false positive", fp_i, fp_k, np.argsort(-probs[fp_i, fp_k], kind="stable")),
        ):
            for j in order[: settings.worst]:
                picks.append((f"{kind}: {classes[kk[j]]}", int(ii[j])))
                target.append(int(kk[j]))
    elif len(classes) == 2:
        fn = np.flatnonzero((y == 1) & (pred == 0))
        fp = np.flatnonzero((y == 0) & (pred == 1))
        picks += [("false negative", i) for i in fn[np.argsort(probs[fn, 1], kind="stable")]][
            : settings.worst
        ]
        picks += [("false positive", i) for i in fp[np.argsort(-probs[fp, 1], kind="stable")]][
            : settings.worst
        ]
    else:
        wrong = np.flatnonzero(y != pred)
        conf = probs[wrong, pred[wrong]]
        picks = [("wrong class", i) for i in wrong[np.argsort(-conf, kind="stable")]][
            : 2 * settings.worst
        ]
    if not picks:
        return None
    at = np.array([i for _, i in picks])
    df = _frame(dm, rows[at], y[at], probs[at], pred[at], classes, settings)
    df.insert(0, "kind", [k for k, _ in picks])
    if not target:
        target = [1 if len(classes) == 2 else int(pred[i]) for i in at]
    df["gradcam_class"] = [classes[t] for t in target]
    df["gradcam"] = list(_gradcam_overlays(dm, model, rows[at], target, settings))
    return df


def _gradcam_overlays(dm, model, rows, target, settings):
    import torch

    from cxrlab.inference.gradcam import GradCAM, overlay

    images = dm.dataset("test").cache.images
    raw = np.stack([np.asarray(images[r]) for r in rows])
    try:
        cam = GradCAM(model)
        x = torch.from_numpy(raw).unsqueeze(1).to(model.device)
        heat = cam(model.to_network_input(x), torch.as_tensor(target))
    except Exception as e:  # an overlay must never cost the run its results
        log.warning("Grad-CAM overlays for the tracker not made: %s", e)
        return [thumbnail(img, settings.thumbnail) for img in raw]
    return [thumbnail(overlay(img, h), settings.thumbnail) for img, h in zip(raw, heat)]


def tracked_tables(dm, model, split: str, settings: TrackingSettings) -> dict:
    """The prediction and worst-error tables of a split the model was just run on (its
    collected ``model.results[split]``), by table name."""
    results = model.results.get(split)
    if not results:
        return {}
    args = (dm, results, dm.classes, model.threshold, settings)
    return {"predictions": prediction_table(*args),
            "worst_errors": worst_errors(dm, model, *args[1:])}  # fmt: skip


def metric_rows(report: dict) -> list[list]:
    """The report's metrics as rows ``[scope, metric, value, ci95_low, ci95_high]``; scope is
    ``overall``, ``macro``, ``micro`` or a class name."""
    out = []

    def walk(node: dict, scope: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict) and "value" in v:
                lo, hi = (v.get("ci95") or [None, None])[:2]
                out.append([scope, k, v["value"], lo, hi])
            elif k in ("per_class", "per_finding"):
                for c, m in v.items():
                    walk(m, c)
            elif isinstance(v, dict):
                walk(v, k)

    walk(report["metrics"], "overall")
    return out


class TrackingCallback(pl.Callback):
    """Each validation during training: the split's confusion matrix, ROC and PR curves to
    every logger (rank 0 only; the predictions are already gathered from every rank)."""

    def __init__(self, settings: TrackingSettings, classes: list[str]):
        self.settings = settings
        self.classes = list(classes)

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if (
            not self.settings.epoch_charts
            or trainer.sanity_checking
            or trainer.state.fn != "fit"
            or not trainer.is_global_zero
            or not trainer.loggers
        ):
            return
        results = pl_module.results.get("val")
        if not results or not len(results["labels"]):
            return
        from cxrlab.utils.loggers import log_epoch_charts

        try:
            log_epoch_charts(trainer.loggers, results, self.classes, trainer.current_epoch,
                             trainer.global_step)  # fmt: skip
        except Exception as e:  # a chart must never stop training
            log.warning("Epoch %d charts not logged: %s", trainer.current_epoch, e)
