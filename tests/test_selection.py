import numpy as np
import pandas as pd
import pytest

from cxrlab.data.selection import (
    SelectionError,
    assert_no_leakage,
    balanced_subset,
    check_folds,
    check_ratios,
    patient_grouped_folds,
    patient_grouped_split,
)


def manifest(n_patients=300, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = rng.choice(["normal", "pneumonia"], p=[0.3, 0.7])
        sub = "normal" if label == "normal" else rng.choice(["bacteria", "virus"], p=[0.65, 0.35])
        for k in range(int(rng.integers(1, 5))):
            rows.append(
                {"path": f"/x/{p}_{k}.png", "label": label, "patient_id": f"p{p}", "subtype": sub}
            )
    return pd.DataFrame(rows)


def test_split_has_no_patient_leakage_and_meets_ratios():
    df = manifest()
    split = patient_grouped_split(df, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    df = df.assign(split=split)
    assert_no_leakage(df)
    assert df.groupby("patient_id")["split"].nunique().max() == 1
    share = df["split"].value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.6, abs=0.03)
    assert share["val"] == pytest.approx(0.2, abs=0.03)
    assert share["test"] == pytest.approx(0.2, abs=0.03)
    # stratified: each split keeps the class mix
    overall = (df["label"] == "normal").mean()
    for _, part in df.groupby("split"):
        assert (part["label"] == "normal").mean() == pytest.approx(overall, abs=0.04)


def test_split_is_deterministic_and_seed_dependent():
    df = manifest()
    r = {"train": 0.6, "val": 0.2, "test": 0.2}
    a, b = patient_grouped_split(df, r, 5), patient_grouped_split(df, r, 5)
    assert a.equals(b)
    assert not a.equals(patient_grouped_split(df, r, 6))


def test_leakage_guard_catches_a_shared_patient():
    df = pd.DataFrame({"patient_id": ["a", "a", "b"], "split": ["train", "test", "val"]})
    with pytest.raises(AssertionError, match="1 patients"):
        assert_no_leakage(df)


@pytest.mark.parametrize(
    "ratios, msg",
    [
        ({"train": 0.6, "val": 0.2, "test": 0.3}, "sum to 1.1"),
        ({"train": 0.8, "val": 0.2}, "missing"),
        ({"train": -0.2, "val": 0.6, "test": 0.6}, "negative"),
    ],
)
def test_bad_ratios_name_the_key(ratios, msg):
    with pytest.raises(SelectionError, match="data.split.ratios") as e:
        check_ratios(ratios)
    assert msg in str(e.value)


def test_balanced_subset_binary_draws_subtypes_evenly():
    df = manifest(600)
    sub = balanced_subset(df, 200, ["normal", "pneumonia"], seed=0)
    assert sub["label"].value_counts().to_dict() == {"normal": 100, "pneumonia": 100}
    pos = sub[sub["label"] == "pneumonia"]["subtype"].value_counts()
    assert pos["bacteria"] == 50 and pos["virus"] == 50
    again = balanced_subset(df, 200, ["normal", "pneumonia"], seed=0)
    assert sub.index.equals(again.index)


def test_balanced_subset_too_large_fails_with_the_key_and_the_limit():
    df = manifest(100)
    n_normal = int((df["label"] == "normal").sum())
    with pytest.raises(SelectionError, match="data.dataset_size=100000 is larger") as e:
        balanced_subset(df, 100000, ["normal", "pneumonia"], seed=0)
    assert f"data.dataset_size<={2 * n_normal}" in str(e.value)
    with pytest.raises(SelectionError, match="multiple of the number of classes"):
        balanced_subset(df, 101, ["normal", "pneumonia"], seed=0)


@pytest.mark.parametrize(
    ("folds", "fold", "msg"),
    [
        (None, 2, r"data.split.fold=2 needs data.split.folds"),
        (5, 5, r"folds are numbered 0 to 4 \(run them all with -m data.split.fold='range\(5\)'\)"),
        (1, 0, r"data.split.folds=1: use 2 or more folds"),
        (5, -1, r"data.split.fold=-1: use a fold number"),
    ],
)
def test_fold_settings_are_named_with_what_to_write(folds, fold, msg):
    from cxrlab.errors import UserError

    with pytest.raises(UserError, match=msg):  # a message for the user, not a traceback
        check_folds(folds, fold)


def test_more_folds_than_patients_outside_the_test_split_is_refused():
    df = manifest(n_patients=4)
    test = pd.Series(False, index=df.index)
    with pytest.raises(
        SelectionError, match=r"folds=5: folds \[.+\] got no patients \(4 patients outside"
    ):
        patient_grouped_folds(df, test, folds=5, fold=0, seed=0)
