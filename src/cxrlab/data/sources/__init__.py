"""Dataset sources: each turns one dataset layout into a manifest.

A manifest is a DataFrame with one row per image and at least the columns
``path`` (absolute), ``label`` (a class name), ``patient_id``; optionally ``study_id``, ``view``,
``official_split`` and ``subtype``. Sources know layouts and label rules, nothing about splits.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrlab.errors import UserError

REQUIRED_COLUMNS = ("path", "label", "patient_id")


class SourceError(UserError):
    """The dataset on disk does not match the layout its source expects."""


def validate_manifest(df: pd.DataFrame, classes: list[str], name: str) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in df]
    if missing:
        raise SourceError(f"{name}: manifest lacks columns {missing}")
    if df.empty:
        raise SourceError(f"{name}: no images found")
    targets = [f"y_{c}" for c in classes]
    if any(c.startswith("y_") for c in df.columns):
        # multi-label: a finding column per class, 1 / 0 / NaN (unknown); ``label`` is text
        missing = [t for t in targets if t not in df]
        if missing:
            raise SourceError(f"{name}: multi-label manifest lacks finding columns {missing}")
        values = df[targets].to_numpy(dtype=float)
        bad = ~(np.isnan(values) | (values == 0) | (values == 1))
        if bad.any():
            row = int(np.flatnonzero(bad.any(1))[0])
            raise SourceError(
                f"{name}: finding values must be 1, 0 or blank (unknown); {df['path'].iloc[row]} "
                f"has {dict(zip(classes, values[row]))}"
            )
        unknown = []
    else:
        unknown = sorted(set(df["label"]) - set(classes))
    if unknown:
        example = df.loc[df["label"] == unknown[0], "path"].iloc[0]
        raise SourceError(
            f"{name}: labels {unknown} are not in the class list {classes} (e.g. {example}); "
            "fix the labels or the class list (data.source.classes)"
        )
    dup = df["path"].duplicated()
    if dup.any():
        raise SourceError(f"{name}: {int(dup.sum())} duplicate paths, e.g. {df.path[dup].iloc[0]}")
    return df.reset_index(drop=True)


def files_by_name(root, suffixes) -> dict[str, str]:
    """Every file under ``root`` with one of ``suffixes``, by file name (label files name
    images, not paths). Hidden files (``.DS_Store``, ``._x.png``) and ``Thumbs.db`` are not
    images and are left out."""
    import os

    out: dict[str, str] = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            if not n.startswith(".") and os.path.splitext(n)[1].lower() in suffixes:
                out.setdefault(n, os.path.join(os.path.abspath(folder), n))
    return out


def note_dropped(df: pd.DataFrame, dropped: dict[str, int]) -> pd.DataFrame:
    """Attach ``{reason: count}`` of rows a source left out; the datamodule reports them."""
    df.attrs["dropped"] = {
        **df.attrs.get("dropped", {}),
        **{k: int(v) for k, v in dropped.items() if v},
    }
    return df


def attach_paths(
    df: pd.DataFrame, names: pd.Series, files: dict[str, str], where: str, hint: str
) -> pd.DataFrame:
    """Join label rows to files found on disk; rows whose file is missing are dropped and
    counted (a partial download still trains), none found at all is an error saying what to do.
    """
    paths = names.map(files)
    missing = int(paths.isna().sum())
    if missing == len(df):
        raise SourceError(
            f"{where}: none of the {len(df)} images named in the label file were found. {hint}"
        )
    dropped = dict(df.attrs.get("dropped", {}))
    out = df.assign(path=paths)[paths.notna()].reset_index(drop=True)
    return note_dropped(out, {**dropped, "label row without its image file": missing})
