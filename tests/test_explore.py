"""explore.py: the dataset report agrees with the datamodule and finds what is wrong."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import compose_train, run_here, train_here
from hydra.utils import instantiate

from cxrlab.data.sources.kaggle_pneumonia import NO_PATIENT

# every test here trains, serves or sweeps: the inner loop (pytest -m "not slow") skips it
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def messy_kaggle(tiny_phantom, tmp_path_factory):
    """The tiny phantom in the Kaggle layout plus a corrupt file and a byte-identical copy."""
    root = tmp_path_factory.mktemp("messy") / "kaggle"
    shutil.copytree(tiny_phantom, root)
    normal = sorted((root / "chest_xray" / "train" / "NORMAL").glob("*.jpeg"))
    (normal[0].parent / "IM-9999-0001.jpeg").write_bytes(b"not a jpeg at all")
    shutil.copy(normal[1], normal[1].parent / "IM-9998-0001.jpeg")  # a duplicate, new patient
    # a truncated download: its header reads fine, its pixels do not decode
    (normal[0].parent / "IM-9997-0001.jpeg").write_bytes(normal[2].read_bytes()[:5000])
    pneumonia = root / "chest_xray" / "test" / "PNEUMONIA"
    (pneumonia / "Copy of image.jpeg").write_bytes(b"")  # junk with no patient in its name
    (pneumonia / "notes.txt").write_text("junk")
    return root


@pytest.fixture(scope="module")
def report(messy_kaggle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explore")
    overrides = [
        "data=kaggle_pneumonia",
        f"data.source.root={messy_kaggle}",
        "data.on_bad_file=skip",
        "explore.progress=false",
        "explore.samples_per_class=4",
    ]
    run_here("explore.py", tmp, "report", overrides)
    return tmp / "report", overrides


def test_report_files_and_pictures(report):
    out, _ = report
    for name in (
        "summary.md",
        "summary.json",
        "class_balance.png",
        "image_sizes.png",
        "intensity_per_class.png",
        "samples.png",
        "images_per_patient.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name


def test_numbers_agree_with_the_datamodule(report, tmp_path):
    out, overrides = report
    summary = json.loads((out / "summary.json").read_text())
    cfg = compose_train([o for o in overrides if not o.startswith("explore.")], tmp_path)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup()
    assert summary["run_selection"]["splits"] == dm.describe()
    full = dm.manifest  # no subset here: the whole index, resplit
    assert summary["index"]["images"] == len(full)
    assert summary["index"]["patients"] == full["patient_id"].nunique()
    assert summary["index"]["classes"] == {c: int((full["label"] == c).sum()) for c in dm.classes}


def test_unreadable_and_duplicate_files_are_reported(report, messy_kaggle):
    out, _ = report
    summary = json.loads((out / "summary.json").read_text())
    bad = summary["unreadable"]["files"]
    assert sorted(Path(b["path"]).name for b in bad) == ["IM-9997-0001.jpeg", "IM-9999-0001.jpeg"]
    assert all("not a decodable image" in b["reason"] for b in bad)
    left_out = summary["index"]["left_out_by_source"]
    assert (
        left_out[NO_PATIENT] == 1 and left_out["not an image file (.txt, no DICOM preamble)"] == 1
    )
    (group,) = summary["duplicates"]["examples"]
    assert Path(group[1]).name == "IM-9998-0001.jpeg"
    assert summary["official_split_leakage"]["patients_in_several_official_splits"] == 0
    md = (out / "summary.md").read_text()
    assert "IM-9999-0001.jpeg" in md and "![class_balance](class_balance.png)" in md


def test_explore_logs_to_wandb_offline(tiny_phantom, tmp_path):
    run_here(
        "explore.py",
        tmp_path,
        "report",
        [
            "data=kaggle_pneumonia",
            f"data.source.root={tiny_phantom}",
            "explore.progress=false",
            "explore.samples_per_class=2",
            "logger=wandb",
        ],
        check=True,
    )
    runs = list((tmp_path / "report" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = {p.name for p in runs[0].rglob("*")}
    assert any(name.startswith("splits") and name.endswith(".table.json") for name in files)
    assert any(name.startswith("samples") and name.endswith(".png") for name in files)


def test_explore_counts_what_training_uses_file_for_file(report, messy_kaggle, tmp_path):
    """The same data settings through train.py: its splits.csv (which image, which split,
    which skipped and why) is explore's, and its test split is explore's test split."""
    out, overrides = report
    data = [o for o in overrides if o.startswith("data")]
    train_here(tmp_path, *data, "evaluation.bootstrap=20", "model=resnet18")
    trained = pd.read_csv(tmp_path / "run" / "splits.csv", keep_default_na=False)
    explored = pd.read_csv(out / "splits.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(trained, explored)
    summary = json.loads((out / "summary.json").read_text())
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["skipped_unreadable"] == summary["unreadable"]["images"] == 2
    test = summary["run_selection"]["splits"]["test"]
    assert (metrics["images"], metrics["patients"]) == (test["images"], test["patients"])
    assert metrics["left_out_by_source"] == summary["index"]["left_out_by_source"]
