"""Kaggle "chest-xray-pneumonia" (Kermany et al. 2018) and the phantom, which copies its layout.

Layout: ``<root>/chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``. Names carry the patient
and the pneumonia subtype: ``person12_bacteria_47.jpeg``, ``person3_virus_9.jpeg``; normal images
are ``IM-0117-0001.jpeg``, ``NORMAL2-IM-1427-0001.jpeg`` (patient ``IM-0117`` / ``NORMAL2-IM-1427``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxrlab.data.imageio import scan_images
from cxrlab.data.sources import SourceError, note_dropped, validate_manifest

TASKS = {
    "binary": ["normal", "pneumonia"],
    "multiclass": ["normal", "bacteria", "virus"],
}
_PNEUMONIA = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_NORMAL = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-\d+", re.IGNORECASE)
NO_PATIENT = "PNEUMONIA file name without a patient id (expected person<N>_<bacteria|virus>_<M>)"


def parse_name(name: str, folder: str) -> tuple[str, str]:
    """(patient_id, subtype) from a file name; subtype is normal, bacteria or virus."""
    stem = Path(name).stem
    if folder.upper() == "PNEUMONIA":
        m = _PNEUMONIA.match(stem)
        if not m:
            raise SourceError(
                f"{name}: a PNEUMONIA file name should look like person12_bacteria_47"
            )
        return m.group(1).lower(), m.group(2).lower()
    m = _NORMAL.match(stem)
    return (m.group(1).upper() if m else stem), "normal"


def index(root: str | Path, task: str = "binary") -> tuple[pd.DataFrame, list[str]]:
    """Manifest of every image under ``root/chest_xray`` and the task's class list."""
    if task not in TASKS:
        raise SourceError(f"data.task={task!r}: use one of {list(TASKS)}")
    root = Path(root)
    base = root / "chest_xray"
    if not base.is_dir():
        raise SourceError(
            f"{base} does not exist: expected the Kaggle layout chest_xray/{{train,val,test}}/"
            "{NORMAL,PNEUMONIA}/. Get it with `python download_data.py kaggle_pneumonia`."
        )
    rows, dropped = [], {}
    for split in ("train", "val", "test"):
        for folder in ("NORMAL", "PNEUMONIA"):
            d = base / split / folder
            if not d.is_dir():
                continue
            # junk (readme files, .DS_Store, stray copies) is left out and counted, whatever
            # its name; only a missing chest_xray/ folder or no images at all is a layout error
            files, junk = scan_images(d, recursive=False)
            for reason, n in junk.items():
                dropped[reason] = dropped.get(reason, 0) + n
            for f in files:
                try:
                    patient, subtype = parse_name(f.name, folder)
                except SourceError:
                    dropped[NO_PATIENT] = dropped.get(NO_PATIENT, 0) + 1
                    continue
                label = (
                    subtype
                    if task == "multiclass"
                    else ("normal" if subtype == "normal" else "pneumonia")
                )
                rows.append(
                    {
                        "path": str(f.resolve()),
                        "label": label,
                        "patient_id": patient,
                        "subtype": subtype,
                        "official_split": split,
                        "view": "PA",
                    }
                )
    df = note_dropped(pd.DataFrame(rows), dropped)
    return validate_manifest(df, TASKS[task], "kaggle_pneumonia"), TASKS[task]
