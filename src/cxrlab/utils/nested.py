"""Nested dictionaries as flat ``a/b/c`` keys (config to logger params, metrics to CIs), and
settings objects from either themselves or their dictionaries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


def as_settings(cls: type[T], value: T | Mapping | None) -> T:
    """``value`` itself when it is already a ``cls`` (built and checked once, by
    ``cxrlab.config.validate``, and handed down), else a ``cls`` made from its dictionary (a
    checkpoint's hyper-parameters, a direct call from Python)."""
    return value if isinstance(value, cls) else cls(**dict(value or {}))


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}/"))
        else:
            out[key] = v
    return out
