"""Dataset sources: each turns one dataset layout into a manifest.

A manifest is a DataFrame with one row per image and at least the columns
``path`` (absolute), ``label`` (a class name), ``patient_id``; optionally ``study_id``, ``view``,
``official_split`` and ``subtype``. Sources know layouts and label rules, nothing about splits.
"""

from __future__ import annotations

import pandas as pd

REQUIRED_COLUMNS = ("path", "label", "patient_id")


class SourceError(ValueError):
    """The dataset on disk does not match the layout its source expects."""


def validate_manifest(df: pd.DataFrame, classes: list[str], name: str) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in df]
    if missing:
        raise SourceError(f"{name}: manifest lacks columns {missing}")
    if df.empty:
        raise SourceError(f"{name}: no images found")
    unknown = sorted(set(df["label"]) - set(classes))
    if unknown:
        raise SourceError(f"{name}: labels {unknown} are not in the class list {classes}")
    dup = df["path"].duplicated()
    if dup.any():
        raise SourceError(f"{name}: {int(dup.sum())} duplicate paths, e.g. {df.path[dup].iloc[0]}")
    return df.reset_index(drop=True)
