"""data.task=multilabel: NIH's findings and a CSV with unknown labels, end to end."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import train_here
from layouts import nih as nih_layout
from sklearn.metrics import roc_auc_score

from cxrlab.data.selection import SelectionError
from cxrlab.data.sources import SourceError
from cxrlab.data.sources import csv as csv_source

FINDINGS = ["Pneumonia", "Effusion", "Infiltration"]


def test_csv_finding_columns_keep_unknown_and_uncertain_labels_out(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "path,patient_id,Edema,Effusion\n"
        "a.png,p1,1,0\n"
        "b.png,p1,,1\n"  # Edema not labelled
        "c.png,p2,-1,0\n"  # Edema uncertain (CheXpert's -1)
    )
    df, classes = csv_source.index(tmp_path / "labels.csv", task="multilabel",
                                   finding_columns=["Edema", "Effusion"])  # fmt: skip
    assert classes == ["Edema", "Effusion"]
    assert df["y_Edema"].tolist()[0] == 1 and np.isnan(df["y_Edema"].tolist()[1:]).all()
    assert df["y_Effusion"].tolist() == [0, 1, 0] and list(df["label"]) == ["Edema", "Effusion", ""]
    assert df.attrs["dropped"]["uncertain labels (-1), left out of their finding"] == 1
    (tmp_path / "bad.csv").write_text("path,Edema\na.png,2\n")
    with pytest.raises(SourceError, match=r"bad.csv, row 2: finding values must be 1, 0, -1"):
        csv_source.index(tmp_path / "bad.csv", task="multilabel", finding_columns=["Edema"])


def test_multilabel_subset_serves_rare_findings_first():
    from cxrlab.data.selection import finding_matrix, multilabel_balanced_subset

    rng = np.random.default_rng(0)
    n = 2000
    df = pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "patient_id": range(n)})
    df["y_common"] = (rng.random(n) < 0.5).astype(float)
    df["y_rare"] = (rng.random(n) < 0.02).astype(float)  # about 40 images
    sub = multilabel_balanced_subset(df, 300, ["common", "rare"], seed=0)
    y = finding_matrix(sub, ["common", "rare"])
    assert len(sub) == 300 and y[:, 1].sum() == df["y_rare"].sum()  # every rare image (< 100)
    assert y[:, 0].sum() >= 100 and (y.sum(1) == 0).sum() >= 100  # its share, then none
    with pytest.raises(SelectionError, match="larger than the data"):
        multilabel_balanced_subset(df, 5000, ["common", "rare"], seed=0)


@pytest.fixture(scope="module")
def nih_root(tiny_phantom, tmp_path_factory):
    root = tmp_path_factory.mktemp("nih_ml") / "nih"
    nih_layout(tiny_phantom, root)
    return root


def _recomputed(report_dir) -> tuple[dict, pd.DataFrame]:
    report = json.loads((report_dir / "metrics.json").read_text())
    return report, pd.read_csv(report_dir / "predictions.csv")


def _check_per_finding_auroc(report, preds):
    """scikit-learn on predictions.csv, unknown labels left out, gives every per-finding AUROC
    of metrics.json to 1e-6, each with an interval."""
    checked = 0
    for c, m in report["metrics"]["per_finding"].items():
        known = preds[f"y_{c}"].notna()
        y, p = preds.loc[known, f"y_{c}"], preds.loc[known, f"prob_{c}"]
        if y.nunique() < 2:
            assert m["auroc"]["value"] is None
            continue
        assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
        assert len(m["auroc"]["ci95"]) == 2
        checked += 1
    assert checked >= 1


@pytest.mark.slow
def test_nih_multilabel_trains_tests_predicts_and_serves(nih_root, tmp_path):
    from fastapi.testclient import TestClient

    from cxrlab.inference.predictor import Predictor
    from cxrlab.inference.service import create_app

    train_here(tmp_path, "data=nih", f"data.source.root={nih_root}", "data.task=multilabel",
               f"data.source.findings=[{','.join(FINDINGS)}]", "model=resnet18",
               "trainer.max_epochs=2", "evaluation.bootstrap=50")  # fmt: skip
    run = tmp_path / "run"
    report, preds = _recomputed(run / "report")
    assert report["task"] == "multilabel" and report["classes"] == [f.lower() for f in FINDINGS]
    _check_per_finding_auroc(report, preds)
    assert len(report["threshold"]["value"]) == 3  # one per finding, chosen on validation
    epochs = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["val/auroc"])
    assert len(epochs) == 2 and "val/auroc_pneumonia" in epochs  # every logger: per finding

    predictor = Predictor.from_checkpoint(str(run / "checkpoints" / "best.ckpt"), "cpu")
    got = predictor.predict_files(preds["path"].tolist()[:8], progress=False)
    for c in report["classes"]:  # predict.py and the test report give the same probabilities
        assert got[f"prob_{c}"].to_numpy() == pytest.approx(preds[f"prob_{c}"][:8], abs=1e-5)
    assert list(got["prediction"].fillna("")) == list(preds["prediction"].fillna("")[:8])

    client = TestClient(create_app(predictor))
    path = preds["path"].iloc[0]
    with open(path, "rb") as f:
        r = client.post("/predict?gradcam=true", files={"file": ("x.png", f, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["probabilities"]) == set(report["classes"]) and len(body["threshold"]) == 3
    want = [c for c in report["classes"] if body["probabilities"][c] >= report["threshold"][
        "per_finding"][c]]  # fmt: skip
    assert body["findings"] == want and body["gradcam_png"]
    with open(path, "rb") as f:
        r = client.post("/predict?gradcam=true&finding=effusion",
                        files={"file": ("x.png", f, "image/png")})  # fmt: skip
        assert r.status_code == 200 and r.json()["gradcam_png"] != body["gradcam_png"]
        f.seek(0)
        bad = client.post("/predict?gradcam=true&finding=nope", files={"file": ("x.png", f)})
    assert bad.status_code == 422 and "use one of" in bad.text

    # explore.py: images showing each finding per split, and findings together
    from conftest import run_here

    run_here("explore.py", tmp_path, "explore", ["data=nih", f"data.source.root={nih_root}",
             "data.task=multilabel", f"data.source.findings=[{','.join(FINDINGS)}]",
             "data.preprocess.size=32", "data.num_workers=0", "logger=[]"])  # fmt: skip
    summary = json.loads((tmp_path / "explore" / "summary.json").read_text())
    both = summary["index"]["co_occurrence"]
    assert both["pneumonia"]["pneumonia"] == summary["index"]["classes"]["pneumonia"]
    assert both["pneumonia"]["infiltration"] == both["infiltration"]["pneumonia"]
    splits = summary["run_selection"]["splits"]
    assert splits["test"]["classes"] == report["class_counts"]  # the same test split


@pytest.mark.slow
def test_csv_multilabel_with_unknown_labels_masks_them_in_metrics(nih_root, tmp_path):
    """A CSV whose finding columns leave a third of the labels blank: those pairs are in
    neither the loss nor the metrics; predictions.csv keeps them blank."""
    from cxrlab.data.sources import nih

    table, classes = nih.labels(next(nih_root.glob("Data_Entry*")), task="multilabel",
                                findings=FINDINGS)  # fmt: skip
    files = {p.name: p for p in nih_root.rglob("*.png")}
    table = table[table["image"].isin(files)].reset_index(drop=True)
    rng = np.random.default_rng(0)
    out = pd.DataFrame({"path": [str(files[n]) for n in table["image"]],
                        "patient_id": table["patient_id"]})  # fmt: skip
    for c in classes:
        v = table[f"y_{c}"].astype("Int64").astype(object)
        v[rng.random(len(v)) < 0.33] = None
        out[c] = v
    out.to_csv(tmp_path / "labels.csv", index=False)
    train_here(tmp_path, "data=csv", f"data.source.file={tmp_path / 'labels.csv'}",
               "data.task=multilabel", f"data.source.finding_columns=[{','.join(classes)}]",
               "model=resnet18", "trainer.max_epochs=1", "evaluation.bootstrap=50")  # fmt: skip
    report, preds = _recomputed(tmp_path / "run" / "report")
    assert preds[[f"y_{c}" for c in classes]].isna().to_numpy().any()
    _check_per_finding_auroc(report, preds)
    for c in classes:
        assert report["labelled_counts"][c] == int(preds[f"y_{c}"].notna().sum())


@pytest.mark.slow
def test_zero_shot_baseline_is_torchxrayvisions_own_output_per_finding(
    nih_root, tmp_path, monkeypatch
):
    """eval.py zero_shot=true: no training, torchxrayvision's classifier rows for the
    dataset's findings (weights made here, served from 127.0.0.1), thresholds chosen on
    validation, the same report format; each probability is sigmoid of that finding's row."""
    import torch
    import torchxrayvision as xrv
    from conftest import eval_here
    from test_weights import XRV, Server

    from cxrlab.data.preprocess import PreprocessSpec, load_preprocessed
    from cxrlab.models import weights as W

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(W.OFFLINE_ENV, raising=False)
    torch.manual_seed(0)
    net = xrv.models.DenseNet(weights=None)  # random trunk, random rows: distinct outputs
    for m in net.modules():  # BatchNorm statistics of xrv-range inputs, not saturated outputs
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        net.features(torch.rand(8, 1, 64, 64) * 2048 - 1024)
    net.eval()
    served = tmp_path / "served"
    served.mkdir()
    torch.save(net, served / W.xrv_source(XRV).path.name)
    server = Server(served)
    try:
        monkeypatch.setenv(W.MIRROR_ENV, server.url)
        eval_here(tmp_path, "zero_shot=true", "data=nih", f"data.source.root={nih_root}",
                  "data.task=multilabel", f"data.source.findings=[{','.join(FINDINGS)}]",
                  "data.preprocess.size=64", "data.num_workers=0", "evaluation.bootstrap=50",
                  "accelerator=cpu")  # fmt: skip
    finally:
        server.stop()
    report, preds = _recomputed(tmp_path / "eval" / "report")
    assert report["checkpoint"] == f"zero-shot: torchxrayvision {XRV}"
    assert report["pretrained"]["head_rows"] == {f.lower(): f for f in FINDINGS}
    assert report["threshold"]["chosen_on"] == "val" and len(report["threshold"]["value"]) == 3
    _check_per_finding_auroc(report, preds)
    # the probability of each finding is torchxrayvision's classifier row for it
    path = preds["path"].iloc[0]
    img = load_preprocessed(path, PreprocessSpec(size=64))
    x = torch.from_numpy(img).float()[None, None] / 255.0 * 2048 - 1024  # xrv's input range
    with torch.no_grad():
        f = torch.relu(net.features(x)).mean((2, 3))
        logits = net.classifier(f)[0]
    for name in FINDINGS:
        j = xrv.datasets.default_pathologies.index(name)
        want = torch.sigmoid(logits[j]).item()
        assert 0.001 < want < 0.999  # not saturated: the comparison means something
        assert preds[f"prob_{name.lower()}"].iloc[0] == pytest.approx(want, abs=1e-4)
