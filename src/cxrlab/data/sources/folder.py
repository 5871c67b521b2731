"""Your own images, one folder per class: ``<root>/<class>/**/*.{png,jpg,dcm,...}``.

Classes are the folder names (sorted, or ``classes`` to fix the order: for a binary task the
second class is the positive one). Patients come from the file names through
``patient_regex`` (its first group, e.g. ``^(\\w+?)_`` for ``P0042_1.png``); without it every
image counts as its own patient, which is only leakage-free if no patient has two images, so
cxrlab says so loudly.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from cxrlab.data.imageio import SUPPORTED_SUFFIXES, scan_images
from cxrlab.data.sources import SourceError, note_dropped, validate_manifest

log = logging.getLogger(__name__)


def patients_from_names(names: list[str], patient_regex: str | None, where: str) -> list[str]:
    if not patient_regex:
        log.warning(
            "%s: no patient ids (set data.source.patient_regex or a patient column): every "
            "image is its own patient, so two images of one patient could land in two splits",
            where,
        )
        return list(names)
    rx = re.compile(patient_regex)
    out = []
    for n in names:
        m = rx.search(n)
        if not m:
            raise SourceError(f"{n}: data.source.patient_regex={patient_regex!r} does not match")
        out.append(m.group(1) if m.groups() else m.group(0))
    return out


def index(
    root: str | Path,
    task: str = "binary",
    classes: list[str] | None = None,
    patient_regex: str | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"data.source.root={root}: no such folder (expected <root>/<class>/...)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    classes = list(classes) if classes else found
    missing = [c for c in classes if c not in found]
    if missing:
        raise SourceError(f"{root}: class folders {missing} do not exist (found {found})")
    if len(classes) < 2:
        raise SourceError(f"{root}: need at least two class folders, found {found}")
    if task == "binary" and len(classes) != 2:
        raise SourceError(
            f"{root}: data.task=binary needs two classes, found {classes}: use data.task="
            "multiclass or data.source.classes=[negative,positive]"
        )
    rows, dropped = [], {}
    for c in classes:
        # DICOM files named by UID (no suffix) are recognized by content; junk is counted
        files, junk = scan_images(root / c)
        for reason, n in junk.items():
            dropped[reason] = dropped.get(reason, 0) + n
        rows += [{"path": str(f.resolve()), "label": c, "name": f.stem} for f in files]
    df = pd.DataFrame(rows, columns=["path", "label", "name"])
    empty = [c for c in classes if not (df["label"] == c).any()]
    if empty:
        raise SourceError(
            f"{root}: class folders {empty} hold no images ({sorted(SUPPORTED_SUFFIXES)}); "
            "add images or leave the class out with data.source.classes"
        )
    df["patient_id"] = patients_from_names(df["name"].tolist(), patient_regex, str(root))
    df = note_dropped(df.drop(columns="name"), dropped)
    return validate_manifest(df, classes, "folder"), classes
