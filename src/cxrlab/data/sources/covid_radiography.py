"""COVID-19 Radiography Database (Chowdhury et al. 2020, Rahman et al. 2021; Kaggle
"tawsifurrahman/covid19-radiography-database"): 21,165 PNGs in four class folders.

Layout: ``<root>/COVID-19_Radiography_Dataset/<class>/images/*.png`` with ``masks/`` (lung masks,
not images to train on) beside ``images/``, class folders ``COVID``, ``Lung_Opacity``,
``Normal``, ``Viral Pneumonia``; older releases keep the PNGs directly in the class folders.
The files are named ``<class>-<n>.png`` and carry no patient id: the database pools several
public collections and does not publish one. Each image is therefore its own patient, and the
split cannot rule out a patient in two splits; cxrlab warns, and docs/datasets.md says so.

Tasks: ``multiclass`` normal / covid / lung_opacity / viral_pneumonia; ``binary`` normal /
covid (the other two folders are left out and counted); ``classes`` picks any subset and order
(binary: [negative, positive]).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cxrlab.data.imageio import scan_images
from cxrlab.data.sources import SourceError, note_dropped, validate_manifest

log = logging.getLogger(__name__)

FOLDERS = {"Normal": "normal", "COVID": "covid", "Lung_Opacity": "lung_opacity",
           "Viral Pneumonia": "viral_pneumonia"}  # fmt: skip
TASKS = {"binary": ["normal", "covid"], "multiclass": list(FOLDERS.values())}
HINT = "Get it with `python download_data.py covid_radiography`."


def dataset_dir(root: Path) -> Path:
    for cand in (root / "COVID-19_Radiography_Dataset", root):
        if all((cand / f).is_dir() for f in FOLDERS):
            return cand
    raise SourceError(
        f"{root}: expected COVID-19_Radiography_Dataset/{{{','.join(FOLDERS)}}}/images/. {HINT}"
    )


def index(root: str | Path, task: str = "multiclass", classes: list[str] | None = None):
    if task not in TASKS:
        raise SourceError(f"data.task={task!r}: covid_radiography supports {list(TASKS)}")
    base = dataset_dir(Path(root))
    classes = list(classes) if classes else TASKS[task]
    unknown = [c for c in classes if c not in FOLDERS.values()]
    if unknown:
        raise SourceError(
            f"data.source.classes: {unknown} are not classes of covid_radiography "
            f"({list(FOLDERS.values())})"
        )
    if task == "binary" and len(classes) != 2:
        raise SourceError(f"data.task=binary needs two classes, got {classes}")
    rows, left_out, dropped = [], 0, {}
    for folder, label in FOLDERS.items():
        images = base / folder / "images"
        images = images if images.is_dir() else base / folder
        files, junk = scan_images(images, recursive=False)
        if label in classes:
            for reason, n in junk.items():
                dropped[reason] = dropped.get(reason, 0) + n
        if label not in classes:
            left_out += len(files)
            continue
        if not files:
            raise SourceError(f"{images}: the {folder} class folder has no images. {HINT}")
        rows += [{"path": str(f.resolve()), "label": label, "patient_id": f"{folder}/{f.stem}"}
                 for f in files]  # fmt: skip
    log.warning(
        "covid_radiography publishes no patient ids: each image counts as its own patient, so "
        "a patient with several images may appear in two splits (see docs/datasets.md)"
    )
    df = note_dropped(pd.DataFrame(rows), {**dropped, "class not in data.source.classes": left_out})
    return validate_manifest(df, classes, "covid_radiography"), classes
