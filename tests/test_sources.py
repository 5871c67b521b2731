"""Users' own data: the folder and csv sources, through the datamodule and train.py."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import train_here

from cxrlab.data.datamodule import CXRDataModule
from cxrlab.data.selection import SelectionError
from cxrlab.data.sources import SourceError, folder
from cxrlab.data.sources import csv as csv_source

PHANTOM_PATIENT = r"^(person\d+|IM-\d+)"


@pytest.fixture(scope="module")
def class_folders(tiny_phantom, tmp_path_factory):
    """The tiny phantom re-laid out as <root>/<class>/<file>, as users keep their data."""
    root = tmp_path_factory.mktemp("own") / "images"
    for src, cls in (("NORMAL", "normal"), ("PNEUMONIA", "pneumonia")):
        (root / cls / "sub").mkdir(parents=True)
        for f in (tiny_phantom / "chest_xray").glob(f"*/{src}/*.jpeg"):
            shutil.copy(f, root / cls / "sub" / f.name)
    (root / "normal" / ".DS_Store").write_text("")
    return root


def test_folder_source_classes_and_patients(class_folders):
    df, classes = folder.index(class_folders, patient_regex=PHANTOM_PATIENT)
    assert classes == ["normal", "pneumonia"]
    assert df["path"].str.endswith(".jpeg").all()  # .DS_Store ignored
    assert df.groupby("patient_id").size().max() > 1  # phantom patients have several images
    flipped, classes = folder.index(class_folders, classes=["pneumonia", "normal"])
    assert classes == ["pneumonia", "normal"] and len(flipped) == len(df)
    assert flipped["patient_id"].nunique() == len(flipped)  # no regex: one patient per image


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": ["normal", "covid"]}, "do not exist"),
        ({"patient_regex": r"^(nomatch)"}, "does not match"),
    ],
)
def test_folder_source_errors_name_the_setting(class_folders, kwargs, message):
    with pytest.raises(SourceError, match=message):
        folder.index(class_folders, **kwargs)


def test_csv_source_relative_paths_and_patient_column(class_folders, tmp_path):
    df, _ = folder.index(class_folders, patient_regex=PHANTOM_PATIENT)
    rel = df.assign(file=df["path"].str.replace(str(class_folders) + "/", "", regex=False))
    labels = class_folders / "labels.csv"
    rel.rename(columns={"patient_id": "pid"})[["file", "label", "pid"]].to_csv(labels, index=False)
    got, classes = csv_source.index(
        labels, path_column="file", patient_column="pid", classes=["normal", "pneumonia"]
    )
    assert classes == ["normal", "pneumonia"]
    assert sorted(got["path"]) == sorted(df["path"])
    assert (
        got.set_index("path")["patient_id"].to_dict()
        == df.set_index("path")["patient_id"].to_dict()
    )
    with pytest.raises(SourceError, match="no column 'image'"):
        csv_source.index(labels, path_column="image")
    three = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "label": ["x", "y", "z"]})
    three.to_csv(tmp_path / "three.csv", index=False)
    with pytest.raises(SourceError, match="data.task=binary needs two classes"):
        csv_source.index(tmp_path / "three.csv")


def test_patient_grouped_split_holds_for_own_folders(class_folders, tmp_path):
    dm = CXRDataModule(
        source={"name": "folder", "root": str(class_folders), "patient_regex": PHANTOM_PATIENT},
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    m = dm.select()
    assert m.groupby("patient_id")["split"].nunique().max() == 1
    assert set(m["split"]) == {"train", "val", "test"}


@pytest.mark.slow
def test_train_py_on_a_folder_of_images(class_folders, tmp_path):
    train_here(
        tmp_path,
        "data=folder",
        f"data.source.root={class_folders}",
        f"data.source.patient_regex='{PHANTOM_PATIENT}'",
        "evaluation.bootstrap=20",
        "logger=[]",  # as lightning-hydra-template's sweeps pass it: no logger at all
    )
    assert (tmp_path / "run" / "test_metrics.json").is_file()
    assert not (tmp_path / "run" / "csv").exists() and not (tmp_path / "run" / "wandb").exists()


def test_a_setting_the_source_does_not_have_is_named(class_folders, tmp_path):
    proc = train_here(
        tmp_path,
        "data=folder",
        f"data.source.root={class_folders}",
        "+data.source.num_patients=60",  # a phantom setting
        check=False,
    )
    assert proc.returncode == 2
    assert "['num_patients'] are not settings of the folder source" in proc.stderr


# ---------------------------------------------------------------- bad input
def labels_csv(class_folders, tmp_path, extra_rows=()):
    df, _ = folder.index(class_folders, patient_regex=PHANTOM_PATIENT)
    df = pd.concat([df, pd.DataFrame(list(extra_rows))], ignore_index=True)
    f = tmp_path / "labels.csv"
    df[["path", "label", "patient_id"]].to_csv(f, index=False)
    return f, df


def test_csv_duplicate_rows_are_counted_and_conflicting_labels_named(class_folders, tmp_path):
    base, df = labels_csv(class_folders, tmp_path)
    first = df.iloc[0]
    f, _ = labels_csv(class_folders, tmp_path, [first.to_dict(), first.to_dict()])
    got, _ = csv_source.index(f)
    assert len(got) == len(df) and got.attrs["dropped"] == {"duplicate row": 2}
    f, _ = labels_csv(
        class_folders,
        tmp_path,
        [{**first.to_dict(), "label": "pneumonia" if first.label == "normal" else "normal"}],
    )
    with pytest.raises(SourceError, match="different labels, e.g. " + first.path):
        csv_source.index(f)


def test_csv_label_outside_the_class_list_is_named(class_folders, tmp_path):
    row = {"path": str(class_folders / "x.png"), "label": "covid", "patient_id": "p1"}
    f, _ = labels_csv(class_folders, tmp_path, [row])
    with pytest.raises(SourceError, match=r"labels \['covid'\] are not in the class list.*x.png"):
        csv_source.index(f, classes=["normal", "pneumonia"])


def test_bad_files_are_skipped_and_counted_or_stop_before_training(class_folders, tmp_path):
    """A missing file in the label CSV, a corrupt JPEG, a truncated PNG, a text file named .png:
    skipped and counted with data.on_bad_file=skip, all named before training with error."""
    root = tmp_path / "images"
    shutil.copytree(class_folders, root)
    good = next((root / "normal" / "sub").glob("*.jpeg")).read_bytes()
    (root / "normal" / "sub" / "IM-9001-0001.jpeg").write_bytes(good[: len(good) // 3] + b"\0" * 50)
    (root / "normal" / "sub" / "IM-9002-0001.jpeg").write_bytes(b"\xff\xd8garbage")
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.full((64, 64), 128, np.uint8))
    (root / "pneumonia" / "sub" / "person9003_bacteria_1.png").write_bytes(png.tobytes()[:60])
    (root / "pneumonia" / "sub" / "person9004_virus_1.png").write_text("not an image")
    (root / "pneumonia" / "Thumbs.db").write_bytes(b"\0" * 32)
    f, df = labels_csv(root, tmp_path, [{"path": str(root / "normal" / "gone.png"),
                                         "label": "normal", "patient_id": "IM-9005"}])  # fmt: skip

    def module(policy):
        return CXRDataModule(source={"name": "csv", "file": str(f)}, preprocess={"size": 32},
                             cache_dir=str(tmp_path / "cache"), on_bad_file=policy,
                             num_workers=0, progress=False)  # fmt: skip

    dm = module("skip")
    dm.setup()
    assert "file does not exist" in dm.skipped[str(root / "normal" / "gone.png")]
    truncated_jpeg = str(root / "normal" / "sub" / "IM-9001-0001.jpeg")
    bad = {p for p in dm.skipped} - {truncated_jpeg}  # a truncated JPEG may decode in part
    assert len(bad) == 4 and all(Path(p).name in
                                 {"gone.png", "IM-9002-0001.jpeg", "person9003_bacteria_1.png",
                                  "person9004_virus_1.png"} for p in bad)  # fmt: skip
    used = sum(len(dm.dataset(s)) for s in ("train", "val", "test"))
    assert used == len(df) - len(dm.skipped)
    with pytest.raises(SelectionError, match="unreadable images .data.on_bad_file=error.") as e:
        module("error").setup()
    assert "gone.png: file does not exist" in str(e.value)


def test_empty_class_folder_is_named(class_folders, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(class_folders, root)
    (root / "covid").mkdir()
    (root / "covid" / ".DS_Store").write_text("")
    with pytest.raises(SourceError, match=r"class folders \['covid'\] hold no images"):
        folder.index(root, task="multiclass")


# ---------------------------------------------------------------- junk and DICOM names
def test_junk_in_a_kaggle_class_folder_is_skipped_and_counted(tiny_phantom, tmp_path):
    """What real downloads and user copies hold beside the images, in either class folder."""
    import cv2
    import numpy as np

    from cxrlab.data.sources import kaggle_pneumonia

    root = tmp_path / "kaggle"
    shutil.copytree(tiny_phantom, root)
    clean, _ = kaggle_pneumonia.index(tiny_phantom)
    ok, jpeg = cv2.imencode(".jpeg", np.full((64, 64), 100, np.uint8))
    for cls in ("NORMAL", "PNEUMONIA"):
        d = root / "chest_xray" / "train" / cls
        (d / "empty.jpeg").write_bytes(b"")  # a name no pattern knows, an empty file
        (d / "notes.txt").write_text("downloaded from kaggle")
        (d / "._person1_bacteria_1.jpeg").write_bytes(b"\0" * 10)  # macOS resource fork
    (root / "chest_xray" / "train" / "PNEUMONIA" / "IMG_0042.jpeg").write_bytes(jpeg.tobytes())
    df, _ = kaggle_pneumonia.index(root)
    dropped = df.attrs["dropped"]
    assert dropped[kaggle_pneumonia.NO_PATIENT] == 2  # empty.jpeg and IMG_0042 in PNEUMONIA/
    assert dropped["not an image file (.txt, no DICOM preamble)"] == 2
    assert dropped["hidden or system file"] == 2
    # NORMAL/empty.jpeg has a usable name (its own patient): it stays for the cache build to
    # find unreadable and count; nothing else was added
    extra = sorted(Path(p).name for p in set(df["path"]) - set(clean["path"].str.replace(
        str(tiny_phantom), str(root), regex=False)))  # fmt: skip
    assert extra == ["empty.jpeg"]
    # a wrong layout is still an error
    with pytest.raises(SourceError, match="chest_xray"):
        kaggle_pneumonia.index(tmp_path)


def test_dicom_named_by_uid_is_found_in_folders_and_by_predict(class_folders, tmp_path):
    """DICOM exports are often named by UID with no suffix: found by their preamble."""
    from pydicom.data import get_testdata_file

    from cxrlab.inference.predictor import expand_inputs

    root = tmp_path / "images"
    shutil.copytree(class_folders, root)
    uid = "1.2.826.0.1.3680043.8.1055.1.20111103111148288.98361414.79379639"
    shutil.copy(get_testdata_file("RG1_UNCR.dcm"), root / "pneumonia" / uid)
    (root / "pneumonia" / "README").write_text("no image")
    df, _ = folder.index(root)
    assert (root / "pneumonia" / uid).resolve().as_posix() in set(df["path"])
    assert df.attrs["dropped"]["not an image file (no suffix, no DICOM preamble)"] == 1
    found = expand_inputs([str(root / "pneumonia")])
    assert str(root / "pneumonia" / uid) in found and not any(f.endswith("README") for f in found)
