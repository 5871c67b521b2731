"""Patient-level bootstrap confidence intervals.

Images of one patient are correlated, so resampling images understates the uncertainty:
each replicate draws *patients* with replacement and takes all their images. Percentile
intervals; replicates where a metric is undefined (one class drawn) are left out for that metric.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cxrlab.utils.nested import flatten


def patient_bootstrap(
    metric_fn: Callable[[np.ndarray], dict],
    patient_ids: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """``metric_fn(rows)`` computes (nested) metrics on the given row indices.

    Returns ``{flattened metric name: (low, high)}``.
    """
    patient_ids = np.asarray(patient_ids)
    uniq, inverse = np.unique(patient_ids, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == i) for i in range(len(uniq))]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        pick = rng.integers(0, len(uniq), len(uniq))
        rows = np.concatenate([rows_of[i] for i in pick])
        for k, v in flatten(metric_fn(rows)).items():
            samples.setdefault(k, []).append(float(v))
    alpha = (1 - level) / 2
    out = {}
    for k, vals in samples.items():
        a = np.asarray(vals)
        a = a[np.isfinite(a)]
        out[k] = (
            (float(np.quantile(a, alpha)), float(np.quantile(a, 1 - alpha)))
            if len(a)
            else (float("nan"), float("nan"))
        )
    return out
