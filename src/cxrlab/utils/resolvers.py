"""OmegaConf resolvers that cxrlab's configs use (registered when cxrlab is imported)."""

from __future__ import annotations

from omegaconf import OmegaConf


def _default(value, fallback):
    """``${cxrlab.default:VALUE,FALLBACK}``: VALUE, or FALLBACK when VALUE is null or empty."""
    return fallback if value is None or value == "" else value


# metric names containing one of these are better when lower (the sweep's direction: auto,
# the checkpoint and early-stopping mode)
LOWER_IS_BETTER = ("loss", "error", "ece", "brier")


def lower_is_better(metric: str | None) -> bool:
    name = (metric or "").lower()
    return any(w in name for w in LOWER_IS_BETTER)


def _mode(metric):
    """``${cxrlab.mode:${optimized_metric}}``: min for losses and errors, else max."""
    return "min" if lower_is_better(metric) else "max"


def register() -> None:
    if not OmegaConf.has_resolver("cxrlab.default"):
        OmegaConf.register_new_resolver("cxrlab.default", _default)
    if not OmegaConf.has_resolver("cxrlab.mode"):
        OmegaConf.register_new_resolver("cxrlab.mode", _mode)
