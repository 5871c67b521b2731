"""The public datasets' sources: real layouts made from the phantom, the real label files that
torchxrayvision ships (NIH's 112k rows, RSNA's), and train.py + eval on each."""

import json
import logging
from pathlib import Path

import layouts
import pandas as pd
import pytest
from conftest import eval_here, run_here, train_here

from cxrlab.data.datamodule import CXRDataModule
from cxrlab.data.selection import assert_no_leakage, patient_grouped_folds, patient_grouped_split
from cxrlab.data.sources import SourceError, covid_radiography, nih, rsna_pneumonia, siim_covid

BUILDERS = {
    "nih": layouts.nih,
    "rsna_pneumonia": layouts.rsna,
    "covid_radiography": layouts.covid_radiography,
    "siim_covid": layouts.siim_covid,
}


@pytest.fixture(scope="module")
def datasets(tiny_phantom, tmp_path_factory):
    """{source name: (root, what the builder expects)} for every public layout."""
    base = tmp_path_factory.mktemp("datasets")
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    return {
        name: (base / name, build(tiny_phantom, base / name)) for name, build in BUILDERS.items()
    }


def shipped(name: str) -> Path:
    xrv = pytest.importorskip("torchxrayvision")
    return Path(xrv.__file__).parent / "data" / name


# ---------------------------------------------------------------- the indexers on layouts
def test_nih_labels_patients_and_left_out_rows(datasets, tiny_phantom):
    root, exp = datasets["nih"]
    df, classes = nih.index(root)
    assert classes == ["no_finding", "pneumonia"]
    table = exp["table"].set_index("Image Index")
    names = df["path"].map(lambda p: Path(p).name)
    # the label is the table's: Pneumonia anywhere in Finding Labels, else No Finding
    want = (
        table.loc[names, "Finding Labels"]
        .str.contains("Pneumonia")
        .map({True: "pneumonia", False: "no_finding"})
    )
    assert (df["label"].to_numpy() == want.to_numpy()).all()
    assert (
        df["patient_id"].to_numpy() == table.loc[names, "Patient ID"].astype(str).to_numpy()
    ).all()
    assert df.attrs["dropped"] == {
        "other findings without Pneumonia": exp["other"],
        "label row without its image file": exp["missing"],
    }
    pa, _ = nih.index(root, views=["PA"])
    assert set(pa["view"]) == {"PA"} and len(pa) < len(df)
    multi, classes = nih.index(
        root, task="multiclass", findings=["No Finding", "Pneumonia", "Effusion"]
    )
    assert classes == ["no_finding", "pneumonia", "effusion"]
    assert (multi["label"] == "effusion").sum() == exp["other"]
    with pytest.raises(SourceError, match="data.source.target='Covid'"):
        nih.index(root, target="Covid")


def test_rsna_one_row_per_image_from_box_rows(datasets):
    root, exp = datasets["rsna_pneumonia"]
    df, classes = rsna_pneumonia.index(root)
    assert len(df) == exp["images"] and (df["label"] == "pneumonia").sum() == exp["positives"]
    assert df["path"].str.endswith(".dcm").all() and set(df["view"]) == {"PA", "AP"}
    multi, classes = rsna_pneumonia.index(root, task="multiclass")
    assert classes == ["normal", "not_normal", "lung_opacity"]
    assert (multi["label"] == "lung_opacity").sum() == exp["positives"]
    pa, _ = rsna_pneumonia.index(root, views=["PA"])
    assert set(pa["view"]) == {"PA"} and pa.attrs["dropped"]["view not in ['PA']"] == len(df) - len(
        pa
    )


def test_covid_radiography_folders_masks_and_thumbs(datasets):
    root, exp = datasets["covid_radiography"]
    df, classes = covid_radiography.index(root)
    assert classes == ["normal", "covid", "lung_opacity", "viral_pneumonia"]
    assert df["path"].str.contains("/images/").all()  # masks/ and Thumbs.db are not images
    counts = df["label"].value_counts()
    assert counts["viral_pneumonia"] == exp["counts"]["Viral Pneumonia"]
    binary, classes = covid_radiography.index(root, task="binary")
    assert classes == ["normal", "covid"] and set(binary["label"]) == {"normal", "covid"}
    assert binary.attrs["dropped"]["class not in data.source.classes"] == (
        exp["counts"]["Lung_Opacity"] + exp["counts"]["Viral Pneumonia"]
    )


def test_siim_views_and_multi_image_studies_are_decided_and_counted(datasets):
    root, exp = datasets["siim_covid"]
    df, classes = siim_covid.index(root, progress=False)
    assert classes == ["negative", "typical", "indeterminate", "atypical"]
    assert not df["view"].isin(["LL"]).any()
    assert df["patient_id"].str.startswith("P-").all()  # from the DICOM PatientID
    assert df.groupby("patient_id")["study_id"].nunique().max() > 1  # patients with several studies
    assert df.attrs["dropped"] == {
        "study without an image file": 1,
        "view not in ['AP', 'PA']": exp["lateral"],
        "image of a multi-image study with no ViewPosition": exp["ambiguous"],
    }
    binary, classes = siim_covid.index(root, task="binary", progress=False)
    assert classes == ["negative", "pneumonia"] and len(binary) == len(df)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_missing_dataset_says_how_to_get_it(name, tmp_path):
    mod = {"nih": nih, "rsna_pneumonia": rsna_pneumonia, "siim_covid": siim_covid,
           "covid_radiography": covid_radiography}[name]  # fmt: skip
    tmp_path.mkdir(exist_ok=True)
    with pytest.raises(SourceError, match="download_data.py"):
        mod.index(tmp_path)


def test_every_source_builds_a_leak_free_cache(datasets, tmp_path):
    for name, (root, _) in datasets.items():
        task = "binary" if name in ("nih", "rsna_pneumonia") else "multiclass"
        dm = CXRDataModule(source={"name": name, "root": str(root)}, task=task,
                           preprocess={"size": 32}, cache_dir=str(tmp_path / "cache"),
                           num_workers=0, progress=False)  # fmt: skip
        dm.setup()
        assert dm.skipped == {}, name  # every layout's encodings decode
        m = dm.select()
        assert m.groupby("patient_id")["split"].nunique().max() == 1, name
        assert sum(len(dm.dataset(s)) for s in ("train", "val", "test")) == len(m), name


# ---------------------------------------------------------------- the real label files
def test_nih_full_label_file_splits_by_patient_without_leakage():
    df, classes = nih.labels(shipped("Data_Entry_2017_v2020.csv.gz"), negative="rest")
    assert len(df) == 112_120 and df["patient_id"].nunique() == 30_805  # the published counts
    assert (df["label"] == "pneumonia").sum() == 1_431
    split = patient_grouped_split(df, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0)
    df = df.assign(split=split)
    assert_no_leakage(df)
    share = df["split"].value_counts(normalize=True)
    assert abs(share["train"] - 0.7) < 0.01 and abs(share["test"] - 0.2) < 0.01
    # stratified: the rare class keeps its share in every split
    pos = df[df["label"] == "pneumonia"]["split"].value_counts(normalize=True)
    assert abs(pos["test"] - 0.2) < 0.05


def test_nih_full_label_file_cross_validation_folds_by_patient():
    """K-fold on the real file: the test split is the plain split's, every other patient in
    exactly one fold, folds stratified, fold i validates and the other folds train."""
    df, _ = nih.labels(shipped("Data_Entry_2017_v2020.csv.gz"), negative="rest")
    plain = patient_grouped_split(df, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0)
    test = plain == "test"
    seen = []
    for fold in range(5):
        split, fold_of = patient_grouped_folds(df, test, folds=5, fold=fold, seed=0)
        assert split[test.to_numpy()].eq("test").all() and split[~test.to_numpy()].ne("test").all()
        assert (split == "val").equals(fold_of == fold)
        assert_no_leakage(df.assign(split=split))
        seen.append(fold_of)
    assert all(f.equals(seen[0]) for f in seen)  # one partition for every fold number
    rest = df.assign(fold=seen[0])[~test.to_numpy()]
    assert rest.groupby("patient_id")["fold"].nunique().max() == 1  # no patient in two folds
    share = rest["fold"].value_counts(normalize=True)
    assert share.between(0.19, 0.21).all() and len(share) == 5
    pos = rest[rest["label"] == "pneumonia"]["fold"].value_counts(normalize=True)
    # the rare class in every fold near its share (stratified by each patient's majority label)
    assert pos.between(0.15, 0.25).all()


def test_nih_full_label_file_multilabel_split_is_stratified_over_every_finding():
    """data.task=multilabel on the real file: 14 findings per image, whole patients per split,
    every finding at its split share (iterative stratification over patients)."""
    from cxrlab.data.selection import finding_matrix, multilabel_grouped_split

    df, classes = nih.labels(shipped("Data_Entry_2017_v2020.csv.gz"), task="multilabel")
    assert len(df) == 112_120 and len(classes) == 14
    y = finding_matrix(df, classes)
    assert y.sum(0)[classes.index("pneumonia")] == 1_431  # the published count
    split = multilabel_grouped_split(df, classes, {"train": 0.7, "val": 0.1, "test": 0.2}, 0)
    assert_no_leakage(df.assign(split=split))
    for name, share in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        part = y[(split == name).to_numpy()].sum(0) / y.sum(0)
        assert abs(part - share).max() < 0.01, (name, dict(zip(classes, part.round(3))))


def test_rsna_full_label_file_and_shipped_views():
    df, _ = rsna_pneumonia.labels(shipped("kaggle_stage_2_train_labels.csv.zip"))
    assert len(df) == 26_684 and (df["label"] == "pneumonia").sum() == 6_012
    views = rsna_pneumonia.shipped_views()
    assert df["image_id"].isin(views).all() and set(views.values()) == {"PA", "AP"}


# ---------------------------------------------------------------- train.py and eval.py
@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILDERS))
def test_train_and_eval_on_each_dataset(name, datasets, tmp_path):
    root, _ = datasets[name]
    train_here(tmp_path, f"data={name}", f"data.source.root={root}",
               "evaluation.bootstrap=20", "model=resnet18")  # fmt: skip
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["images"] > 0
    assert metrics["skipped_unreadable"] == 0
    if name in ("nih", "siim_covid"):
        assert sum(metrics["left_out_by_source"].values()) > 0
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    eval_here(tmp_path, f"ckpt_path={ckpt}", "evaluation.bootstrap=20", "accelerator=cpu")
    again = json.loads((tmp_path / "eval" / "report" / "metrics.json").read_text())
    assert again["images"] == metrics["images"]  # eval.py rebuilds the same test split
    preds = pd.read_csv(tmp_path / "eval" / "report" / "predictions.csv")
    assert preds["path"].str.startswith(str(root)).all()


@pytest.mark.slow
def test_explore_reports_what_the_source_left_out(datasets, tmp_path):
    root, exp = datasets["siim_covid"]
    overrides = ["data=siim_covid", f"data.source.root={root}", "explore.progress=false",
                 "explore.samples_per_class=2"]  # fmt: skip
    run_here("explore.py", tmp_path, "report", overrides)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    left_out = summary["index"]["left_out_by_source"]
    assert left_out["view not in ['AP', 'PA']"] == exp["lateral"]
    text = (tmp_path / "report" / "summary.md").read_text()
    assert f"image of a multi-image study with no ViewPosition: {exp['ambiguous']}" in text
    assert "DICOM" in summary["headers"]["formats"]
