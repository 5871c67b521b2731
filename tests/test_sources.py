"""Users' own data: the folder and csv sources, through the datamodule and train.py."""

import shutil

import pandas as pd
import pytest
from test_train import run_train

from cxrlab.data.datamodule import CXRDataModule
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


def test_train_py_on_a_folder_of_images(class_folders, tmp_path):
    run_train(
        tmp_path,
        "data=folder",
        "~data.source.num_patients",  # debug=default sizes the phantom
        f"data.source.root={class_folders}",
        f"data.source.patient_regex='{PHANTOM_PATIENT}'",
        "evaluation.bootstrap=20",
    )
    assert (tmp_path / "run" / "test_metrics.json").is_file()


def test_a_setting_the_source_does_not_have_is_named(class_folders, tmp_path):
    proc = run_train(tmp_path, "data=folder", f"data.source.root={class_folders}", check=False)
    assert proc.returncode != 0
    assert "['num_patients'] are not settings of the folder source" in proc.stderr
