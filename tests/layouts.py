"""Small copies of the public datasets' real layouts, made from the phantom's images.

Each builder writes the files a Kaggle/NIH download unpacks to (label files with the real
column names, folder trees, DICOM/PNG encodings as the originals use them) and returns what a
test needs to check the indexer: the expected labels, patients and left-out counts.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxrlab.data.dicomwrite import write_dicom
from cxrlab.data.sources.kaggle_pneumonia import parse_name


def phantom_images(phantom: Path) -> pd.DataFrame:
    """(file, patient, subtype) for every phantom image, in a fixed order."""
    rows = []
    for f in sorted((phantom / "chest_xray").glob("*/*/*.jpeg")):
        patient, subtype = parse_name(f.name, f.parent.name)
        rows.append({"file": f, "patient": patient, "subtype": subtype})
    return pd.DataFrame(rows)


def gray(f: Path, size: int = 96) -> np.ndarray:
    img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def nih(phantom: Path, root: Path) -> dict:
    """Data_Entry_2017_v2020.csv + images_00k/images/<patient>_<k>.png (16-bit, as the NIH PNGs
    are 8-bit: 16 here exercises the depth rule), a row without its file, other findings."""
    imgs = phantom_images(phantom)
    pids = {p: i + 1 for i, p in enumerate(sorted(imgs["patient"].unique()))}
    rows, seen = [], {}
    for i, r in imgs.iterrows():
        pid = pids[r.patient]
        k = seen[pid] = seen.get(pid, -1) + 1
        name = f"{pid:08d}_{k:03d}.png"
        folder = root / f"images_{1 + i % 2:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), gray(r.file).astype(np.uint16) * 257)
        finding = "No Finding" if r.subtype == "normal" else "Pneumonia"
        if r.subtype == "virus" and k % 2:
            finding = "Infiltration|Pneumonia"
        if i % 11 == 5:
            finding = "Effusion"  # another finding: not in the binary Pneumonia task
        rows.append([name, finding, k, pid, 50, "M", "PA" if i % 3 else "AP", 96, 96, 0.14, 0.14])
    rows.append(["99999999_000.png", "Pneumonia", 0, 99999999, 40, "F", "PA", 96, 96, 0.14, 0.14])
    cols = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
            "Patient Gender", "View Position", "OriginalImage[Width", "Height]",
            "OriginalImagePixelSpacing[x", "y]"]  # fmt: skip
    table = pd.DataFrame(rows, columns=cols)
    table.to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    (root / "images_001" / "images" / ".DS_Store").write_text("")
    return {
        "table": table,
        "missing": 1,
        "other": int((table["Finding Labels"] == "Effusion").sum()),
    }


def rsna(phantom: Path, root: Path) -> dict:
    """stage_2_train_labels.csv (a box row each, empty box for negatives) + 8-bit DICOMs, some
    JPEG-compressed, and the detailed class file."""
    imgs = phantom_images(phantom)
    labels, detail = [], []
    for i, r in imgs.iterrows():
        pid = f"{i:04d}0000-rsna-fixture-{r.patient}"
        write_dicom(
            root / "stage_2_train_images" / f"{pid}.dcm",
            gray(r.file),
            patient_id=pid,
            view="PA" if i % 2 else "AP",
            syntax="jpeg" if i % 4 == 0 else "explicit",
        )
        if r.subtype == "normal":
            labels.append([pid, None, None, None, None, 0])
            detail.append([pid, "Normal" if i % 3 else "No Lung Opacity / Not Normal"])
        else:
            boxes = 2 if i % 2 else 1  # several box rows for one image
            labels += [[pid, 100.0 * b, 200.0, 80.0, 90.0, 1] for b in range(boxes)]
            detail += [[pid, "Lung Opacity"]] * boxes
    pd.DataFrame(labels, columns=["patientId", "x", "y", "width", "height", "Target"]).to_csv(
        root / "stage_2_train_labels.csv", index=False
    )
    pd.DataFrame(detail, columns=["patientId", "class"]).to_csv(
        root / "stage_2_detailed_class_info.csv", index=False
    )
    return {"images": len(imgs), "positives": int((imgs["subtype"] != "normal").sum())}


def covid_radiography(phantom: Path, root: Path) -> dict:
    """COVID-19_Radiography_Dataset/<class>/{images,masks}/<class>-<n>.png (RGB PNGs)."""
    imgs = phantom_images(phantom)
    folders = ["Normal", "COVID", "Lung_Opacity", "Viral Pneumonia"]
    base = root / "COVID-19_Radiography_Dataset"
    counts = dict.fromkeys(folders, 0)
    for i, r in imgs.iterrows():
        folder = "Normal" if r.subtype == "normal" else folders[1 + i % 3]
        counts[folder] += 1
        for sub in ("images", "masks"):
            (base / folder / sub).mkdir(parents=True, exist_ok=True)
        img = gray(r.file)
        cv2.imwrite(
            str(base / folder / "images" / f"{folder}-{counts[folder]}.png"), np.dstack([img] * 3)
        )
        cv2.imwrite(
            str(base / folder / "masks" / f"{folder}-{counts[folder]}.png"),
            (img > 100).astype(np.uint8) * 255,
        )
    (base / "COVID" / "images" / "Thumbs.db").write_bytes(b"\0" * 64)
    return {"counts": counts}


def siim_covid(phantom: Path, root: Path) -> dict:
    """train_study_level.csv + train/<study>/<series>/<image>.dcm: 12-bit MONOCHROME1/2 in several
    transfer syntaxes, a lateral view in a two-image study, a two-image study with no
    ViewPosition, one study per patient visit (patients have several studies)."""
    imgs = phantom_images(phantom)
    cols = ["Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance",
            "Atypical Appearance"]  # fmt: skip
    syntaxes = ["explicit", "rle", "jpegls", "jpeg2000"]
    studies, expect = [], {"lateral": 0, "ambiguous": 0}
    for i, r in imgs.iterrows():
        study, series = f"1.2.826.0.1.3680043.1.{i + 1}", f"1.2.826.0.1.3680043.2.{i + 1}"
        onehot = [0, 0, 0, 0]
        onehot[0 if r.subtype == "normal" else (1 if r.subtype == "bacteria" else 2 + i % 2)] = 1
        studies.append([f"{study}_study", *onehot])
        px = gray(r.file).astype(np.uint16) * 16  # 12-bit content
        mono = "MONOCHROME1" if i % 5 == 0 else "MONOCHROME2"
        if mono == "MONOCHROME1":
            px = 4095 - px
        d = root / "train" / study / series
        kw = dict(bits_stored=12, patient_id=f"P-{r.patient}", study_uid=study, photometric=mono,
                  syntax=syntaxes[i % 4])  # fmt: skip
        if i % 9 == 4:  # a second series with a lateral view: the lateral image goes
            write_dicom(d / f"im{i}a.dcm", px, view="PA", **kw)
            write_dicom(root / "train" / study / "lat" / f"im{i}b.dcm", px, view="LL", **kw)
            expect["lateral"] += 1
        elif i % 13 == 6:  # two images and no ViewPosition: which is frontal? the study goes
            write_dicom(d / f"im{i}a.dcm", px, view=None, **kw)
            write_dicom(d / f"im{i}b.dcm", px, view=None, **kw)
            expect["ambiguous"] += 2
        else:
            write_dicom(d / f"im{i}.dcm", px, view=None if i % 7 == 0 else "AP", **kw)
    studies.append(["1.2.826.0.1.3680043.1.9999_study", 1, 0, 0, 0])  # a label row without files
    pd.DataFrame(studies, columns=["id", *cols]).to_csv(root / "train_study_level.csv", index=False)
    return expect
