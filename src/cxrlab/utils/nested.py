"""Nested dictionaries as flat ``a/b/c`` keys (config to logger params, metrics to CIs)."""

from __future__ import annotations


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}/"))
        else:
            out[key] = v
    return out
