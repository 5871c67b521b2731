"""Your own label file: a CSV with a path and a label column (and a patient column, please).

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
) -> tuple[pd.DataFrame, list[str]]:
    file = Path(file)
    if not file.is_file():
        raise SourceError(f"data.source.file={file}: no such file")
    raw = pd.read_csv(file)
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
