"""RSNA Pneumonia Detection Challenge (2018): 26,684 frontal DICOMs drawn from NIH ChestX-ray14.

Layout (the Kaggle competition download): ``<root>/stage_2_train_labels.csv`` (``patientId,
x, y, width, height, Target``: one row per opacity box, one row with empty box and Target 0 for
images without), ``<root>/stage_2_train_images/<patientId>.dcm`` and optionally
``stage_2_detailed_class_info.csv`` (``Normal``, ``No Lung Opacity / Not Normal``,
``Lung Opacity``). The image label is the box rows' ``Target`` (any box: pneumonia).

``patientId`` is one id per image: the challenge published no link to the NIH patient, so each
image is its own patient here (the challenge's own test split makes the same assumption).
``view`` (PA/AP) comes from the DICOM headers, read without pixel data, or from the header
table that torchxrayvision ships for this challenge when its ids match.

Tasks: ``binary`` normal / pneumonia (Target); ``multiclass`` normal / not_normal /
lung_opacity from the detailed class file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cxrlab.data.imageio import dicom_tags
from cxrlab.data.sources import (
    SourceError,
    attach_paths,
    files_by_name,
    note_dropped,
    validate_manifest,
)

log = logging.getLogger(__name__)

TASKS = {"binary": ["normal", "pneumonia"], "multiclass": ["normal", "not_normal", "lung_opacity"]}
DETAILED = {"Normal": "normal", "No Lung Opacity / Not Normal": "not_normal",
            "Lung Opacity": "lung_opacity"}  # fmt: skip
HINT = "Get it with `python download_data.py rsna_pneumonia` (Kaggle competition rules apply)."


def labels(label_file: str | Path, task: str = "binary", detailed_file: str | Path | None = None):
    """The label CSV alone -> one row per image (``image_id``, ``label``, ``boxes``)."""
    if task not in TASKS:
        raise SourceError(f"data.task={task!r}: rsna_pneumonia supports {list(TASKS)}")
    raw = pd.read_csv(label_file)
    for col in ("patientId", "Target"):
        if col not in raw:
            raise SourceError(f"{label_file}: no column {col!r}; is this stage_2_train_labels.csv?")
    per_image = raw.groupby("patientId", sort=False).agg(
        target=("Target", "max"), boxes=("Target", "sum")
    )
    df = pd.DataFrame(
        {"image_id": per_image.index.astype(str), "boxes": per_image["boxes"].to_numpy()}
    )
    if task == "binary":
        df["label"] = per_image["target"].map({0: "normal", 1: "pneumonia"}).to_numpy()
    else:
        if detailed_file is None or not Path(detailed_file).is_file():
            raise SourceError(
                "data.task=multiclass needs stage_2_detailed_class_info.csv next to the labels "
                f"({detailed_file}); it comes with the competition download"
            )
        info = pd.read_csv(detailed_file).drop_duplicates("patientId").set_index("patientId")
        df["label"] = df["image_id"].map(info["class"].map(DETAILED))
    missing = df["label"].isna()
    df = note_dropped(df[~missing].reset_index(drop=True), {"no label": int(missing.sum())})
    return df, TASKS[task]


def shipped_views() -> dict[str, str]:
    """patientId -> ViewPosition from torchxrayvision's copy of the challenge's DICOM headers."""
    try:
        import torchxrayvision
    except ImportError:
        return {}
    f = (
        Path(torchxrayvision.__file__).parent
        / "data"
        / "kaggle_stage_2_train_images_dicom_headers.csv.gz"
    )
    if not f.is_file():
        return {}
    table = pd.read_csv(f, usecols=["PatientID", "ViewPosition"])
    return dict(zip(table["PatientID"].astype(str), table["ViewPosition"].astype(str)))


def header_views(paths: pd.Series) -> list[str]:
    return [dicom_tags(p, "ViewPosition")["ViewPosition"] for p in paths]


def index(root: str | Path, task: str = "binary", views: list[str] | None = None):
    root = Path(root)
    label_file = root / "stage_2_train_labels.csv"
    if not label_file.is_file():
        raise SourceError(f"{label_file} does not exist. {HINT}")
    df, classes = labels(label_file, task, root / "stage_2_detailed_class_info.csv")
    files = {
        Path(n).stem: p for n, p in files_by_name(root / "stage_2_train_images", {".dcm"}).items()
    }
    df = attach_paths(df, df["image_id"], files, f"rsna_pneumonia at {root}", HINT)
    known = shipped_views()
    view = df["image_id"].map(known)
    if view.isna().any():  # not the challenge's ids (or no table): ask the files themselves
        view[view.isna()] = header_views(df.loc[view.isna(), "path"])
    df["view"] = view.to_numpy()
    if views:
        keep = df["view"].isin(list(views))
        df = note_dropped(
            df[keep].reset_index(drop=True), {f"view not in {list(views)}": int((~keep).sum())}
        )
    df["patient_id"] = df["image_id"]
    return validate_manifest(df.drop(columns="image_id"), classes, "rsna_pneumonia"), classes
