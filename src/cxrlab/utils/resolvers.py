"""OmegaConf resolvers that cxrlab's configs use (registered when cxrlab is imported)."""

from __future__ import annotations

from omegaconf import OmegaConf


def _default(value, fallback):
    """``${cxrlab.default:VALUE,FALLBACK}``: VALUE, or FALLBACK when VALUE is null or empty."""
    return fallback if value is None or value == "" else value


def register() -> None:
    if not OmegaConf.has_resolver("cxrlab.default"):
        OmegaConf.register_new_resolver("cxrlab.default", _default)
