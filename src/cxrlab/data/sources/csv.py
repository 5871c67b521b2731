"""Your own label file: a CSV with a path and a label column (and a patient column, please).

``data.task=multilabel``: either ``label_column`` holds ``|``-separated findings (``No Finding``
or an empty cell: none), or ``finding_columns`` names one column per finding holding 1
(present), 0 (absent), blank (not labelled) or -1 (uncertain, as CheXpert writes it): blank and
-1 are left out of that finding's loss and metrics.

Relative paths are resolved against ``root`` (default: the CSV's folder). Classes are the
sorted labels, or ``classes`` to fix the order (binary: the second is positive). Files that are
missing or unreadable are found when the cache is built (``data.on_bad_file``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrlab.data.sources import SourceError, note_dropped, validate_manifest
from cxrlab.data.sources.folder import patients_from_names


def index(
    file: str | Path,
    task: str = "binary",
    root: str | Path | None = None,
    path_column: str = "path",
    label_column: str = "label",
    patient_column: str | None = "patient_id",
    patient_regex: str | None = None,
    classes: list[str] | None = None,
    finding_columns: list[str] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    file = Path(file)
    if not file.is_file():
        raise SourceError(f"data.source.file={file}: no such file")
    raw = pd.read_csv(file)
    if task == "multilabel":
        return _multilabel(file, raw, root, path_column, label_column, patient_column,
                           patient_regex, classes, finding_columns)  # fmt: skip
    if finding_columns:
        raise SourceError(
            "data.source.finding_columns is for data.task=multilabel (one column per finding)"
        )
    for key, col in (("path_column", path_column), ("label_column", label_column)):
        if col not in raw:
            raise SourceError(
                f"{file}: no column {col!r} (data.source.{key}); columns: {list(raw.columns)}"
            )
    raw = raw.dropna(subset=[path_column, label_column])
    base = Path(root) if root else file.parent
    paths = [
        p if Path(p).is_absolute() else str((base / p).resolve())
        for p in raw[path_column].astype(str)
    ]
    labels = raw[label_column].astype(str).tolist()
    classes = list(classes) if classes else sorted(set(labels))
    if task == "binary" and len(classes) != 2:
        raise SourceError(
            f"{file}: data.task=binary needs two classes, found {classes}: use data.task="
            "multiclass or data.source.classes=[negative,positive]"
        )
    if patient_column and patient_column in raw:
        patients = raw[patient_column].astype(str).tolist()
    else:
        names = [Path(p).stem for p in paths]
        patients = patients_from_names(names, patient_regex, str(file))
    df = pd.DataFrame({"path": paths, "label": labels, "patient_id": patients})
    # a row listed twice is one image; one file with two different labels is a labelling error
    conflict = df.drop_duplicates(["path", "label"])["path"].duplicated(keep=False)
    if conflict.any():
        first = df.drop_duplicates(["path", "label"])[conflict].iloc[0]["path"]
        labels_of = sorted(df[df["path"] == first]["label"].unique())
        raise SourceError(
            f"{file}: {int(conflict.sum())} rows give one file different labels, e.g. {first}: "
            f"{labels_of}; fix the label file (cxrlab trains single-label classifiers)"
        )
    dup = df.duplicated(["path", "label"])
    df = note_dropped(df[~dup].reset_index(drop=True), {"duplicate row": int(dup.sum())})
    return validate_manifest(df, classes, "csv"), classes


NO_FINDING = {"", "no finding", "none", "normal", "nan"}


def _multilabel(file, raw, root, path_column, label_column, patient_column, patient_regex,
                classes, finding_columns):  # fmt: skip
    """One row per image with a ``y_<finding>`` column each: 1, 0 or NaN (unknown)."""
    import numpy as np

    if path_column not in raw:
        raise SourceError(f"{file}: no column {path_column!r} (data.source.path_column); "
                          f"columns: {list(raw.columns)}")  # fmt: skip
    dropped = {}
    if finding_columns:
        missing = [c for c in finding_columns if c not in raw]
        if missing:
            raise SourceError(f"{file}: no columns {missing} (data.source.finding_columns); "
                              f"columns: {list(raw.columns)}")  # fmt: skip
        classes = list(classes or finding_columns)
        values = raw[list(finding_columns)].apply(pd.to_numeric, errors="coerce")
        bad = ~(values.isna() | values.isin([0, 1, -1])) | (
            raw[list(finding_columns)].notna() & values.isna()
        )
        if bad.to_numpy().any():
            row = int(np.flatnonzero(bad.to_numpy().any(1))[0])
            raise SourceError(
                f"{file}, row {row + 2}: finding values must be 1, 0, -1 (uncertain) or blank; "
                f"got {raw.loc[raw.index[row], list(finding_columns)].to_dict()}"
            )
        dropped["uncertain labels (-1), left out of their finding"] = int(
            (values == -1).sum().sum()
        )
        targets = values.where(values != -1).to_numpy(dtype=float)
    else:
        if label_column not in raw:
            raise SourceError(f"{file}: no column {label_column!r} (data.source.label_column)")
        sets = (
            raw[label_column]
            .fillna("")
            .astype(str)
            .str.split("|")
            .map(lambda s: {x.strip() for x in s if x.strip().lower() not in NO_FINDING})
        )
        classes = list(classes or sorted(set().union(*sets)))
        targets = np.array([[float(c in s) for c in classes] for s in sets]).reshape(
            -1, len(classes)
        )
    if not classes:
        raise SourceError(f"{file}: no findings found for data.task=multilabel")
    base = Path(root) if root else file.parent
    paths = [p if Path(p).is_absolute() else str((base / p).resolve())
             for p in raw[path_column].astype(str)]  # fmt: skip
    if patient_column and patient_column in raw:
        patients = raw[patient_column].astype(str).tolist()
    else:
        patients = patients_from_names([Path(p).stem for p in paths], patient_regex, str(file))
    label = ["|".join(c for c, v in zip(classes, row) if v == 1) for row in targets]
    df = pd.DataFrame({"path": paths, "label": label, "patient_id": patients})
    for k, c in enumerate(classes):
        df[f"y_{c}"] = targets[:, k]
    dup = df["path"].duplicated()
    df = note_dropped(df[~dup].reset_index(drop=True), {**dropped, "duplicate row": int(dup.sum())})
    return validate_manifest(df, classes, "csv"), classes
