import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from cxrlab.evaluation.bootstrap import patient_bootstrap
from cxrlab.evaluation.metrics import binary_metrics, multiclass_metrics
from cxrlab.evaluation.report import write_report
from cxrlab.evaluation.thresholds import ThresholdPolicyError, choose_threshold, parse_policy
from cxrlab.models.module import make_metrics


def binary_case(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + rng.normal(0.35, 0.2, n), 0, 1)
    return y, p


def test_binary_metrics_agree_with_scikit_learn():
    y, p = binary_case()
    t = 0.5
    m = binary_metrics(y, p, t)
    pred = (p >= t).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    ref = {
        "auroc": skm.roc_auc_score(y, p),
        "average_precision": skm.average_precision_score(y, p),
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "sensitivity": skm.recall_score(y, pred),
        "specificity": tn / (tn + fp),
        "ppv": skm.precision_score(y, pred),
        "npv": tn / (tn + fn),
        "f1": skm.f1_score(y, pred),
        "brier": skm.brier_score_loss(y, p),
    }
    for k, v in ref.items():
        assert m[k] == pytest.approx(v, abs=1e-6), k
    # ECE by hand on two bins' worth of a tiny case
    from cxrlab.evaluation.metrics import expected_calibration_error

    conf = np.array([0.9, 0.9, 0.6, 0.6])
    correct = np.array([1, 0, 1, 1])
    assert expected_calibration_error(conf, correct) == pytest.approx(
        (abs(0.5 - 0.9) * 2 + abs(1.0 - 0.6) * 2) / 4
    )


def test_multiclass_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3)) + np.eye(3)[y] * 1.2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    classes = ["normal", "bacteria", "virus"]
    m = multiclass_metrics(y, probs, classes)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-6)
    assert m["macro"]["auroc"] == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-6
    )
    assert m["macro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
    assert m["micro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="micro"), abs=1e-6)
    recalls = skm.recall_score(y, pred, average=None)
    precisions = skm.precision_score(y, pred, average=None)
    cm = skm.confusion_matrix(y, pred)
    for i, c in enumerate(classes):
        pc = m["per_class"][c]
        assert pc["sensitivity"] == pytest.approx(recalls[i], abs=1e-6)
        assert pc["ppv"] == pytest.approx(precisions[i], abs=1e-6)
        fp = cm[:, i].sum() - cm[i, i]
        tn = cm.sum() - cm[i].sum() - fp
        assert pc["false_positive_rate"] == pytest.approx(fp / (fp + tn), abs=1e-6)
        assert pc["false_negative_rate"] == pytest.approx(1 - recalls[i], abs=1e-6)
        assert pc["auroc"] == pytest.approx(skm.roc_auc_score(y == i, probs[:, i]), abs=1e-6)


def test_one_class_split_reports_auroc_as_undefined():
    y = np.zeros(20, int)
    p = np.linspace(0, 1, 20)
    m = binary_metrics(y, p, 0.5)
    assert np.isnan(m["auroc"]) and np.isnan(m["sensitivity"])
    assert m["specificity"] == pytest.approx(0.5)


def brute_force(y, p, policy):
    name, value = parse_policy(policy)
    best, best_t = None, None
    for t in sorted(set(p.tolist()) | {1.01}, reverse=True):
        pred = p >= t
        tp = (pred & (y == 1)).sum()
        fp = (pred & (y == 0)).sum()
        sens = tp / (y == 1).sum()
        spec = 1 - fp / (y == 0).sum()
        prec = tp / (tp + fp) if tp + fp else 1.0
        if name == "youden":
            score = sens + spec - 1
        elif name == "f1":
            score = 2 * prec * sens / (prec + sens) if prec + sens else 0.0
        elif name == "sensitivity":
            score = spec if sens >= value else None
        else:
            score = sens if prec >= value else None
        if score is not None and (best is None or score > best):
            best, best_t = score, t
    return best_t


@pytest.mark.parametrize(
    "policy",
    ["youden", "f1", "sensitivity=0.95", "sensitivity=0.8", "precision=0.9", "precision=0.7"],
)
def test_threshold_policies_match_a_brute_force_search(policy):
    y, p = binary_case(60, seed=4)
    p = np.round(p, 2)  # ties, on purpose
    got = choose_threshold(y, p, policy)
    expected = brute_force(y, p, policy)
    if expected == 1.01:
        assert got > p.max()
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize("policy", ["youden", "sensitivity=0.5"])
def test_threshold_stays_a_probability_when_scores_saturate(policy):
    # a worse-than-chance model whose highest scores are exactly 1.0 (a saturated sigmoid):
    # "nothing positive" must not become 1.0000000000000002, which torchmetrics rejects
    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.0, 0.1, 0.2, 0.9, 1.0, 1.0])
    t = choose_threshold(y, p, policy)
    assert 0.0 <= t <= 1.0
    make_metrics(2, "test/", threshold=t)  # the test metrics accept it


@pytest.mark.parametrize("policy", ["youden", "f1", "sensitivity=0.9", "precision=0.8"])
def test_lightning_metrics_and_the_report_agree_on_scores_at_the_threshold(policy):
    # the threshold is an observed validation score; test images scored exactly that (duplicate
    # images, a near-constant untrained model) are positive in the report (p >= t), and must be
    # in Lightning's torchmetrics too (which call p > t positive)
    y, p = binary_case(80, seed=7)
    p = np.round(p, 2).astype(np.float32)  # ties, and values that float32 cannot hold exactly
    t = choose_threshold(y[:40], p[:40], policy)
    ty, tp = y, p  # the validation images again, and 40 more
    assert (tp == np.float32(t)).any()
    mc = make_metrics(2, "test", threshold=t)
    mc.update(torch.from_numpy(tp), torch.from_numpy(ty))
    got = {k.split("/")[1]: float(v) for k, v in mc.compute().items()}
    want = binary_metrics(ty, tp, t)
    for k in ("accuracy", "balanced_accuracy", "f1", "sensitivity", "specificity"):
        assert got[k] == pytest.approx(want[k], abs=1e-6), k


def test_unreachable_precision_on_saturated_scores_is_a_clear_error():
    # only "nothing positive" would give precision 0.9 here, and no probability threshold
    # does that when scores reach 1.0
    y, p = np.array([1, 1, 0, 0]), np.array([0.0, 0.1, 0.9, 1.0])
    with pytest.raises(ThresholdPolicyError, match="no threshold reaches precision >= 0.9"):
        choose_threshold(y, p, "precision=0.9")


def test_threshold_policy_errors():
    y, p = binary_case(50)
    with pytest.raises(ThresholdPolicyError, match="evaluation.threshold"):
        choose_threshold(y, p, "best")
    with pytest.raises(ThresholdPolicyError, match="one only"):
        choose_threshold(np.ones(10, int), np.linspace(0, 1, 10), "youden")
    assert choose_threshold(y, p, "fixed=0.3") == 0.3


def test_bootstrap_is_seeded_resamples_patients_and_contains_the_estimate():
    y, p = binary_case(400, seed=2)
    patients = np.repeat(np.arange(100), 4)

    def fn(rows):
        return binary_metrics(y[rows], p[rows], 0.5)

    a = patient_bootstrap(fn, patients, n_boot=200, seed=3)
    b = patient_bootstrap(fn, patients, n_boot=200, seed=3)
    assert a == b
    point = binary_metrics(y, p, 0.5)
    for k in ("auroc", "accuracy", "sensitivity", "specificity"):
        lo, hi = a[k]
        assert lo <= point[k] <= hi and hi - lo > 0.01

    # resampling patients: rows of a patient always travel together
    seen = []
    patient_bootstrap(lambda rows: seen.append(rows) or {"n": 0.0}, patients, n_boot=5, seed=0)
    for rows in seen:
        counts = np.bincount(patients[rows], minlength=100)
        assert np.all(counts % 4 == 0)


def test_report_files(tmp_path):
    y, p = binary_case(120)
    df = pd.DataFrame(
        {
            "path": [f"/x/{i}.png" for i in range(120)],
            "patient_id": [f"p{i // 2}" for i in range(120)],
            "label": np.where(y == 1, "pneumonia", "normal"),
            "prob_normal": 1 - p,
            "prob_pneumonia": p,
        }
    )
    rep = write_report(
        df,
        ["normal", "pneumonia"],
        tmp_path,
        "test",
        threshold=0.4,
        threshold_policy="youden",
        n_boot=50,
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == rep
    assert saved["split"] == "test" and saved["images"] == 120 and saved["patients"] == 60
    assert saved["threshold"] == {"value": 0.4, "policy": "youden", "chosen_on": "val"}
    for k in (
        "auroc",
        "average_precision",
        "accuracy",
        "balanced_accuracy",
        "sensitivity",
        "specificity",
        "ppv",
        "npv",
        "f1",
        "brier",
        "ece",
    ):
        v = saved["metrics"][k]
        assert v["ci95"][0] <= v["value"] <= v["ci95"][1], k
    for f in (
        "confusion_matrix.png",
        "roc_pr.png",
        "calibration.png",
        "metrics_vs_threshold.png",
        "model_card.md",
        "predictions.csv",
    ):
        assert (tmp_path / f).stat().st_size > 0, f
    preds = pd.read_csv(tmp_path / "predictions.csv")
    assert ((preds["prob_pneumonia"] >= 0.4) == (preds["prediction"] == "pneumonia")).all()
    card = (tmp_path / "model_card.md").read_text()
    assert "resample patients" in card and "0.4000" in card
