"""SIIM-FISABIO-RSNA COVID-19 Detection (Kaggle competition 2021): 6,054 studies of 6,334 DICOMs.

Layout: ``<root>/train_study_level.csv`` (``id`` = ``<StudyInstanceUID>_study`` and four one-hot
columns ``Negative for Pneumonia``, ``Typical Appearance``, ``Indeterminate Appearance``,
``Atypical Appearance``) and the DICOM tree ``<root>/train/<study>/<series>/<image>.dcm``.
Labels belong to studies; every image of a study gets its study's label. Patients come from
the DICOM ``PatientID`` (several studies share a patient), views from ``ViewPosition``; both
are read from the headers only (no pixel data), in parallel.

Which images (decided here, before any balancing, and every drop is counted and reported):
- images whose ``ViewPosition`` is known and not in ``views`` (default PA and AP: laterals
  out) are left out;
- a study with several images none of which says its view cannot tell its frontal image
  from a lateral one and is left out whole (original system 002 dropped every study with more
  than one *series folder*, after balancing: that kept multi-image series and skewed classes);
- a study with several frontal images keeps them all (same patient, so same split).

Tasks: ``multiclass`` negative / typical / indeterminate / atypical; ``binary`` negative /
pneumonia (any of the three appearances).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from cxrlab.data.imageio import dicom_tags
from cxrlab.data.sources import SourceError, note_dropped, validate_manifest
from cxrlab.utils.progress import track

log = logging.getLogger(__name__)

COLUMNS = {"Negative for Pneumonia": "negative", "Typical Appearance": "typical",
           "Indeterminate Appearance": "indeterminate", "Atypical Appearance": "atypical"}  # fmt: skip
TASKS = {"binary": ["negative", "pneumonia"], "multiclass": list(COLUMNS.values())}
FRONTAL = ("PA", "AP")
HINT = "Get it with `python download_data.py siim_covid` (Kaggle competition rules apply)."


def study_labels(label_file: str | Path, task: str = "multiclass") -> pd.DataFrame:
    """``study`` -> ``label`` from train_study_level.csv; studies without exactly one class out."""
    if task not in TASKS:
        raise SourceError(f"data.task={task!r}: siim_covid supports {list(TASKS)}")
    raw = pd.read_csv(label_file)
    missing = [c for c in ["id", *COLUMNS] if c not in raw]
    if missing:
        raise SourceError(f"{label_file}: no columns {missing}; is this train_study_level.csv?")
    onehot = raw[list(COLUMNS)].fillna(0).astype(int)
    single = onehot.sum(axis=1) == 1
    label = onehot.idxmax(axis=1).map(COLUMNS)
    if task == "binary":
        label = label.where(label == "negative", "pneumonia")
    out = pd.DataFrame({"study": raw["id"].str.replace("_study", "", regex=False), "label": label})
    return note_dropped(out[single].reset_index(drop=True),
                        {"study label is not exactly one class": int((~single).sum())})  # fmt: skip


def _header(path: str) -> tuple[str, str]:
    tags = dicom_tags(path, "PatientID", "ViewPosition")
    return tags["PatientID"], tags["ViewPosition"].upper()


def index(
    root: str | Path,
    task: str = "multiclass",
    views: list[str] | None = FRONTAL,
    workers: int = 8,
    progress: bool = True,
) -> tuple[pd.DataFrame, list[str]]:
    root = Path(root)
    label_file = root / "train_study_level.csv"
    if not label_file.is_file():
        raise SourceError(f"{label_file} does not exist. {HINT}")
    studies = study_labels(label_file, task)
    rows = []
    for study, label in zip(studies["study"], studies["label"]):
        for f in sorted((root / "train" / study).rglob("*.dcm")):
            if not f.name.startswith("."):
                rows.append({"path": str(f.resolve()), "label": label, "study_id": study})
    no_images = int(len(studies) - len({r["study_id"] for r in rows}))
    if not rows:
        raise SourceError(
            f"{root}/train: no DICOM files for the studies in {label_file.name}. {HINT}"
        )
    df = pd.DataFrame(rows)
    with ThreadPoolExecutor(max(1, int(workers))) as pool:
        heads = list(track(pool.map(_header, df["path"]), total=len(df), description="headers",
                           enabled=progress))  # fmt: skip
    df["patient_id"] = [p or s for (p, _), s in zip(heads, df["study_id"])]
    df["view"] = [v for _, v in heads]
    wanted = {v.upper() for v in views} if views else None
    if wanted:  # a known view that is not wanted; unknown views stay (see the docstring)
        other_view = (df["view"] != "") & ~df["view"].isin(wanted)
    else:
        other_view = pd.Series(False, index=df.index)
    df = df[~other_view]
    per_study = df.groupby("study_id")["view"].agg(["size", lambda v: (v == "").all()])
    per_study.columns = ["images", "no_view"]
    ambiguous = per_study.index[(per_study["images"] > 1) & per_study["no_view"]]
    amb = df["study_id"].isin(ambiguous)
    dropped = {
        "study without an image file": no_images,
        f"view not in {sorted(wanted)}" if wanted else "view": int(other_view.sum()),
        "image of a multi-image study with no ViewPosition": int(amb.sum()),
    }
    df = note_dropped(
        df[~amb].reset_index(drop=True), {**studies.attrs.get("dropped", {}), **dropped}
    )
    if df.attrs["dropped"]:
        log.info("siim_covid left out: %s", df.attrs["dropped"])
    return validate_manifest(df, TASKS[task], "siim_covid"), TASKS[task]
