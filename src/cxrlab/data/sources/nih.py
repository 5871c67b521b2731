"""NIH ChestX-ray14 (Wang et al. 2017): 112,120 frontal PNGs of 30,805 patients, 14 findings.

Layout: ``<root>/Data_Entry_2017*.csv`` (``Data_Entry_2017_v2020.csv`` in the current release;
a ``.gz`` of it is read too) and the PNGs anywhere below ``root`` (the release unpacks to
``images_001/images/`` ... ``images_012/images/``). ``Finding Labels`` holds ``|``-separated
findings or ``No Finding``; ``Patient ID`` is a real patient id (patients have up to 184 images,
so the patient-grouped split matters here more than anywhere); ``View Position`` is PA or AP.

Tasks (cxrlab trains single-label classifiers; the 14-label problem is not one of them):
- ``binary``: ``target`` (e.g. Pneumonia) against ``negative``: ``No Finding`` (images with no
  finding at all, the usual choice) or ``rest`` (every image without the target).
- ``multiclass``: one class per name in ``findings`` (``No Finding`` allowed); an image belongs
  to a class when it has exactly one of the chosen findings (findings not chosen may be present);
  images with several chosen ones, or none, are left out and counted.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.sources import (
    SourceError,
    attach_paths,
    files_by_name,
    note_dropped,
    validate_manifest,
)

FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
    "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia",
    "Pneumothorax",
)  # fmt: skip
NO_FINDING = "No Finding"
HINT = (
    "Get NIH ChestX-ray14 as `python download_data.py nih` explains and unpack the images "
    "anywhere below data.source.root."
)


def class_name(finding: str) -> str:
    return re.sub(r"\W+", "_", finding.strip()).lower()


def find_label_file(root: Path) -> Path:
    found = sorted(root.glob("Data_Entry_2017*.csv*"))
    if not found:
        raise SourceError(f"{root}: no Data_Entry_2017*.csv (the NIH label file). {HINT}")
    return found[-1]  # Data_Entry_2017_v2020.csv sorts after Data_Entry_2017.csv


def labels(
    label_file: str | Path,
    task: str = "binary",
    target: str = "Pneumonia",
    negative: str = NO_FINDING,
    findings: list[str] | None = None,
    views: list[str] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """The label file alone -> rows (``image``, ``label``, ``patient_id``, ``view``) and classes."""
    raw = pd.read_csv(
        label_file, usecols=["Image Index", "Finding Labels", "Patient ID", "View Position"]
    )
    dropped: dict[str, int] = {}
    if views:
        keep = raw["View Position"].isin(list(views))
        dropped[f"view not in {list(views)}"] = int((~keep).sum())
        raw = raw[keep]
    sets = raw["Finding Labels"].str.split("|")
    known = set(FINDINGS) | {NO_FINDING}
    if task == "binary":
        if target not in FINDINGS:
            raise SourceError(f"data.source.target={target!r}: use one of {list(FINDINGS)}")
        if negative not in (NO_FINDING, "rest"):
            raise SourceError(f"data.source.negative={negative!r}: use '{NO_FINDING}' or 'rest'")
        positive = sets.map(lambda s: target in s).to_numpy()
        neg = ~positive if negative == "rest" else (raw["Finding Labels"] == NO_FINDING).to_numpy()
        classes = ["no_finding" if negative == NO_FINDING else f"not_{class_name(target)}",
                   class_name(target)]  # fmt: skip
        label = np.where(positive, classes[1], classes[0])
        keep = positive | neg
        dropped[f"other findings without {target}"] = int((~keep).sum())
    elif task == "multiclass":
        findings = list(findings or [NO_FINDING, "Pneumonia", "Effusion", "Atelectasis"])
        bad = [f for f in findings if f not in known]
        if bad or len(findings) < 2:
            raise SourceError(
                f"data.source.findings={findings}: need two or more of {sorted(known)}"
            )
        classes = [class_name(f) for f in findings]
        wanted = set(findings)
        hits = sets.map(lambda s: [f for f in s if f in wanted])
        one = hits.map(len).to_numpy() == 1
        keep = one
        label = np.array([class_name(h[0]) if h else "" for h in hits])
        dropped["several of the chosen findings"] = int((hits.map(len) > 1).sum())
        dropped["none of the chosen findings"] = int((hits.map(len) == 0).sum())
    elif task == "multilabel":
        # every image, a vector of the chosen findings (all 14 by default); NIH's labels are
        # text-mined and never "uncertain", so none is masked
        findings = list(findings or FINDINGS)
        bad = [f for f in findings if f not in FINDINGS]
        if bad or not findings:
            raise SourceError(
                f"data.source.findings={findings}: choose from the 14 findings {list(FINDINGS)}"
            )
        classes = [class_name(f) for f in findings]
        keep = np.ones(len(raw), dtype=bool)
        targets = {
            c: sets.map(lambda s, f=f: float(f in s)).to_numpy() for f, c in zip(findings, classes)
        }
        label = np.array(["|".join(c for c, f in zip(classes, findings) if f in s) for s in sets])
    else:
        raise SourceError(f"data.task={task!r}: nih supports binary, multiclass and multilabel")
    out = pd.DataFrame({
        "image": raw["Image Index"].to_numpy()[keep],
        "label": label[keep],
        "patient_id": raw["Patient ID"].astype(str).to_numpy()[keep],
        "view": raw["View Position"].to_numpy()[keep],
    })  # fmt: skip
    if task == "multilabel":
        for c, v in targets.items():
            out[f"y_{c}"] = v[keep]
    return note_dropped(out, dropped), classes


def index(
    root: str | Path,
    task: str = "binary",
    target: str = "Pneumonia",
    negative: str = NO_FINDING,
    findings: list[str] | None = None,
    views: list[str] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"data.source.root={root}: no such folder. {HINT}")
    df, classes = labels(find_label_file(root), task, target, negative, findings, views)
    df = attach_paths(df, df["image"], files_by_name(root, {".png"}), f"nih at {root}", HINT)
    return validate_manifest(df.drop(columns="image"), classes, "nih"), classes
