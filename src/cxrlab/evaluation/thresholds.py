"""Decision-threshold policies, chosen on the validation split and applied unchanged to test.

Policies (``evaluation.threshold``):
- ``youden``: maximize sensitivity + specificity - 1;
- ``f1``: maximize F1 (the harmonic mean of precision and sensitivity) on validation;
- ``sensitivity=0.95`` (or ``sensitivity:0.95``, which needs no quotes on a command line): the
  highest specificity among thresholds with sensitivity >= 0.95;
- ``precision=0.9``: the highest sensitivity among thresholds with precision (PPV) >= 0.9;
- ``fixed=0.5`` (or a bare number): that threshold.
Candidates are the observed scores (a sample is positive when p >= t). Ties are broken towards
the higher threshold, i.e. fewer positives.
"""

from __future__ import annotations

import numpy as np

from cxrlab.errors import UserError, check_integer


class ThresholdPolicyError(UserError):
    pass


def check_settings(ev) -> None:
    """The rules of ``evaluation.*`` (the threshold policy, the report's bootstrap), run by
    ``cxrlab.config.validate`` before any work."""
    parse_policy(ev.get("threshold", "youden"))
    check_integer(ev.get("bootstrap", 1000), "evaluation.bootstrap", 0,
                  "use 0 (no intervals) or more resamples")  # fmt: skip


def parse_policy(policy: str | float) -> tuple[str, float | None]:
    if isinstance(policy, (int, float)):
        policy = f"fixed={policy}"
    text = str(policy).strip()
    if text in ("youden", "f1"):
        return text, None
    # sensitivity:0.95 is the same policy as sensitivity=0.95 and needs no quoting on a
    # command line (Hydra's override grammar takes no unquoted "=" in a value)
    sep = "=" if "=" in text else ":" if ":" in text else None
    if sep:
        name, value = text.split(sep, 1)
        if name in ("sensitivity", "precision", "fixed"):
            try:
                v = float(value)
            except ValueError as e:
                raise ThresholdPolicyError(
                    f"evaluation.threshold={policy!r}: {value!r} is not a number"
                ) from e
            if not 0 <= v <= 1:
                raise ThresholdPolicyError(
                    f"evaluation.threshold={policy!r}: use a value in [0, 1]"
                )
            return name, v
    try:
        float(text)
        return parse_policy(f"fixed={text}")
    except ValueError:
        raise ThresholdPolicyError(
            f"evaluation.threshold={policy!r}: use youden, f1, sensitivity=<x>, precision=<x> "
            "or fixed=<x>"
        ) from None


def _rates(y: np.ndarray, p: np.ndarray, t: np.ndarray):
    """Sensitivity, specificity and precision for each candidate threshold in ``t``."""
    pos = p[None, :] >= t[:, None]
    yy = y[None, :].astype(bool)
    tp = (pos & yy).sum(1)
    fp = (pos & ~yy).sum(1)
    n_pos, n_neg = yy.sum(), (~yy).sum()
    sens = tp / max(n_pos, 1)
    spec = 1 - fp / max(n_neg, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    return sens, spec, prec


def choose_threshold(y: np.ndarray, p: np.ndarray, policy: str | float) -> float:
    """The threshold a policy picks on labels ``y`` (0/1) and positive-class scores ``p``."""
    name, value = parse_policy(policy)
    if name == "fixed":
        return float(value)
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    if y.min() == y.max():
        raise ThresholdPolicyError(
            f"evaluation.threshold={policy!r} needs both classes in the "
            "validation split; it has one only"
        )
    # every score, plus one just above the highest (nothing positive) - but never above 1: the
    # scores are probabilities, and a threshold of 1.0000000000000002 (a saturated model's
    # scores reach 1.0) is rejected by torchmetrics when the test split is scored with it
    above = min(np.nextafter(p.max(), np.inf), 1.0)
    cand = np.unique(np.concatenate([p, [above]]))[::-1]  # high first
    sens, spec, prec = _rates(y, p, cand)
    if name == "youden":
        score = sens + spec - 1
    elif name == "f1":
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.nan_to_num(2 * prec * sens / (prec + sens))
    elif name == "sensitivity":
        score = np.where(sens >= value - 1e-12, spec, -np.inf)
    else:  # precision
        score = np.where(prec >= value - 1e-12, sens, -np.inf)
    if not np.isfinite(score).any():
        raise ThresholdPolicyError(
            f"no threshold reaches {name} >= {value} on the validation split"
        )
    return float(cand[int(np.argmax(score))])  # argmax takes the first (highest) on ties


def choose_per_finding(y: np.ndarray, probs: np.ndarray, policy, findings) -> list[float]:
    """Multi-label: each finding's threshold by ``policy`` on its labelled validation images;
    0.5 (logged once, naming them) for findings whose validation images are all one class."""
    import logging

    out, fallback = [], []
    for k, name in enumerate(findings):
        known = ~np.isnan(y[:, k])
        yk = y[known, k].astype(int)
        if len(yk) and yk.min() != yk.max():
            out.append(choose_threshold(yk, probs[known, k], policy))
        else:
            fallback.append(name)
            out.append(0.5)
    if fallback:
        logging.getLogger(__name__).warning(
            "Findings %s have one class only (or no labels) in the validation split: no "
            "threshold can be chosen for them by %s, 0.5 is used; their AUROC is undefined "
            "there (a larger validation split, or data.source.findings without them)",
            fallback, policy,
        )  # fmt: skip
    return out


def choose_on_validation(
    trainer, model, dm, ckpt: str | None, ev, keep_predictions: bool = False
) -> None:
    """Choose the decision threshold on the validation split (binary tasks) and store it.

    The best checkpoint's validation predictions decide it; it is written into the checkpoint
    file, so testing, eval.py and predictors apply exactly this value. The report's bootstrap
    settings travel too, so eval.py reproduces the report exactly.
    ``keep_predictions``: the best checkpoint's validation predictions are wanted whatever the
    task (a cross-validation fold's out-of-fold predictions); they are in ``model.results``.
    """
    import logging

    from cxrlab.checkpoints import update_checkpoint

    policy = ev.get("threshold", "youden")
    settings = {"bootstrap": int(ev.get("bootstrap", 1000)), "seed": int(ev.get("seed", 0))}
    extra: dict = {"evaluation": settings}
    multilabel = getattr(model, "multilabel", False)
    if model.num_classes == 2 or multilabel or keep_predictions:
        # (validate reloads the checkpoint: what it restores is overwritten below, not before)
        with model.collecting_predictions():  # no second val/ point in the loggers
            trainer.validate(model, datamodule=dm, ckpt_path=ckpt, weights_only=False,
                             verbose=False)  # fmt: skip
    if multilabel:
        val = model.results["val"]
        t = choose_per_finding(val["labels"].numpy(), val["probs"].numpy(), policy,
                               model.class_names)  # fmt: skip
        model.use_threshold(t, str(policy))
        extra.update(threshold=t, threshold_policy=str(policy))
    elif model.num_classes == 2:
        val = model.results["val"]
        t = choose_threshold(val["labels"].numpy(), val["probs"][:, 1].numpy(), policy)
        model.use_threshold(t, str(policy))
        logging.getLogger(__name__).info(
            "Threshold %.4f chosen on the validation split (policy %s)", t, policy
        )
        extra.update(threshold=t, threshold_policy=str(policy))
    model.use_evaluation_settings(settings)
    if ckpt and trainer.is_global_zero:  # rank 0 writes; every rank waits
        update_checkpoint(ckpt, extra)
    trainer.strategy.barrier("cxrlab-checkpoint")
