"""Every tracker gets the same content, read back with each tracker's own client."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import free_port, run_train, train_here, wandb_records

# every test here trains, serves or sweeps: the inner loop (pytest -m "not slow") skips it
pytestmark = pytest.mark.slow

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite store, local artifact folder)."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
        "--artifacts-destination",
        str(tmp / "artifacts"),
        "--workers",
        "1",
    ]
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
        if proc.poll() is not None:
            raise RuntimeError((tmp / "server.log").read_text()[-3000:])
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not start in 120 s")
    yield url
    proc.terminate()
    proc.wait(30)
    log.close()


@pytest.fixture(scope="module")
def many_run(tmp_path_factory, mlflow_server):
    tmp = tmp_path_factory.mktemp("many")
    run_train(
        tmp,
        "logger=many",
        "model=resnet18",  # the loggers are the subject here, not the network
        f"logger.mlflow.tracking_uri={mlflow_server}",
        "logger.mlflow.log_model=true",
        "logger.wandb.log_model=true",
        "trainer.max_epochs=2",
        "data.source.num_patients=40",
        "evaluation.bootstrap=50",
    )
    return tmp


def test_tensorboard_has_metrics_hparams_and_report_pictures(many_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((many_run / "run" / "tensorboard").rglob("events.out.tfevents*"))
    assert files
    ea = EventAccumulator(str(files[0].parent), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    assert {"train/loss_step", "val/auroc", "val/loss", "test/auroc"} <= scalars
    assert len(ea.Scalars("val/auroc")) == 2  # one per epoch
    images = set(ea.Tags()["images"])
    figures = {"test/figures/confusion_matrix", "test/figures/roc_pr", "test/figures/calibration"}
    assert figures <= images
    hparams = (many_run / "run" / "tensorboard" / "hparams.yaml").read_text()
    assert "resnet18" in hparams


def test_csv_has_every_epoch(many_run):
    df = pd.read_csv(many_run / "run" / "csv" / "metrics.csv")
    assert df["val/auroc"].notna().sum() == 2
    assert df["test/auroc"].notna().sum() == 1


def test_mlflow_server_has_params_metrics_report_and_checkpoint(many_run, mlflow_server):
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("cxrlab")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["model/backbone"] == "resnet18"
    assert run.data.params["data/dataset_size"] == "None"
    assert len(client.get_metric_history(run.info.run_id, "val/auroc")) == 2
    assert "report/test/auroc" in run.data.metrics
    report = [a.path for a in client.list_artifacts(run.info.run_id, "report")]
    assert "report/metrics.json" in report and "report/confusion_matrix.png" in report
    local = client.download_artifacts(run.info.run_id, "report/metrics.json", str(many_run))
    assert json.loads(Path(local).read_text())["split"] == "test"
    # log_model=true: Lightning uploads each checkpoint under its own name (best/, last/)
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"best", "last"} <= top
    assert "best/best.ckpt" in {a.path for a in client.list_artifacts(run.info.run_id, "best")}


def test_wandb_charts_every_epoch_tables_with_the_networks_inputs_and_artifacts(many_run):
    """Read back from the offline run: the validation charts at each epoch, prediction tables
    whose images are the preprocessed inputs of their rows, the worst errors with Grad-CAM,
    the metrics with intervals, the tested checkpoint and the data selection as artifacts."""
    import cv2

    from cxrlab.data.preprocess import PreprocessSpec, load_preprocessed

    run = next((many_run / "run" / "wandb").glob("offline-run-*"))
    rec = wandb_records(run)
    history = [h["item"] for h in rec["history"]]
    charts = [h for h in history if "val/confusion_matrix_table._type" in h]
    assert [h["epoch"] for h in charts] == [0, 1]  # one per validation, the epoch as step
    assert all("val/roc_curve_table._type" in h and "val/pr_curve_table._type" in h for h in charts)
    assert {m.get("name"): m.get("step_metric") for m in rec["metric"]}[
        "val/confusion_matrix"
    ] == "epoch"
    info = rec["run"][-1]
    assert info["display_name"] == "default-resnet18-run" and info["run_group"] == "default"
    assert {"data:synthetic", "model:resnet18", "task:binary"} <= set(info["tags"])

    report = json.loads((many_run / "run" / "report" / "metrics.json").read_text())
    media = run / "files" / "media" / "table"
    spec = PreprocessSpec(size=32)  # debug=default's images

    def logged_table(key: str) -> tuple[dict, dict]:
        """A table with images as W&B stages it for upload: the run's table artifact (the run
        folder's copy has no image references), and its files by path."""
        (art,) = [a for a in rec["artifact"] if a.get("type") == "run_table"
                  and a["name"].startswith(f"run-{info['run_id']}-{key.replace('/', '')}-")]  # fmt: skip
        files = {c["path"]: c["local_path"] for c in art["manifest"]["contents"]}
        return json.loads(Path(files[f"{key}.table.json"]).read_text()), files

    for split in ("val", "test"):
        table, files = logged_table(f"{split}/predictions")
        cols = table["columns"]
        assert cols[:2] == ["image", "row"] and {"patient_id", "label", "prob_pneumonia",
                                                 "prediction", "path"} <= set(cols)  # fmt: skip
        if split == "test":
            assert len(table["data"]) == report["images"]  # under tracking.table_rows
        for row in table["data"][:5]:
            r = dict(zip(cols, row))
            png = cv2.imread(files[r["image"]["path"]], cv2.IMREAD_GRAYSCALE)
            assert (png == load_preprocessed(r["path"], spec)).all(), r["path"]
            assert r["prediction"] == ("pneumonia" if r["prob_pneumonia"] >= report["threshold"][
                "value"] else "normal")  # fmt: skip
        table, files = logged_table(f"{split}/worst_errors")
        worst = [dict(zip(table["columns"], r)) for r in table["data"]]
        assert worst and {w["kind"] for w in worst} <= {"false negative", "false positive"}
        fn = [w["prob_pneumonia"] for w in worst if w["kind"] == "false negative"]
        assert fn == sorted(fn) and all(w["label"] != w["prediction"] for w in worst)
        overlay = cv2.imread(files[worst[0]["gradcam"]["path"]])
        assert overlay.shape == (32, 32, 3)

    (path,) = (media / "test").glob("report_metrics_*.table.json")
    rows = json.loads(path.read_text())
    assert rows["columns"] == ["scope", "metric", "value", "ci95_low", "ci95_high"]
    auroc = next(r for r in rows["data"] if r[1] == "auroc")
    assert auroc[2:] == [report["metrics"]["auroc"]["value"], *report["metrics"]["auroc"]["ci95"]]
    summary = {k: v for s in rec["summary"] for k, v in s["update"].items()}
    assert summary["test/threshold"] == report["threshold"]["value"]
    assert summary["test/threshold_policy"] == "youden" and summary["run/state"] == "finished"
    assert "best/val/auroc" in summary

    arts = {a["type"]: a for a in rec["artifact"] if a.get("type") in ("model", "dataset")}
    model = arts["model"]
    assert model["name"] == f"model-{info['run_id']}" and {"best", "latest"} <= set(
        model["aliases"]
    )
    assert {c["path"] for c in model["manifest"]["contents"]} == {"model.ckpt", "model_card.md"}
    meta = json.loads(model["metadata"])
    assert meta["threshold"] == report["threshold"]["value"] and "pretrained" in meta
    assert meta["model_card"].startswith("# Model card")
    data = arts["dataset"]
    assert [c["path"] for c in data["manifest"]["contents"]] == ["splits.csv"]
    assert json.loads(data["metadata"])["counts"]["test"]["images"] == report["images"]


def test_tensorboard_and_mlflow_get_the_epoch_charts_and_tables(many_run, mlflow_server):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(many_run / "run" / "tensorboard"),
                          size_guidance={"images": 0, "tensors": 0})  # fmt: skip
    ea.Reload()
    for c in ("normal", "pneumonia"):
        assert [e.step for e in ea.Tensors(f"val/pr_curve/{c}")] == [0, 1]
    assert [e.step for e in ea.Images("val/confusion_matrix")] == [0, 1]
    assert {"test/worst_errors", "val/worst_errors"} <= set(ea.Tags()["images"])
    assert "test/predictions/text_summary" in ea.Tags()["tensors"]
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("cxrlab").experiment_id])
    paths = {a.path for d in ("val/epoch_000", "val/epoch_001", "test", "val", "")
             for a in client.list_artifacts(run.info.run_id, d or None)}  # fmt: skip
    assert {"val/epoch_000/confusion_matrix.png", "val/epoch_001/roc_pr.png", "splits.csv",
            "test/predictions.json", "val/worst_errors.json"} <= paths  # fmt: skip
    assert run.data.tags["data"] == "synthetic" and run.info.run_name == "default-resnet18-run"


def test_wandb_offline_has_the_report_table_and_pictures(many_run):
    run = next((many_run / "run" / "wandb").glob("offline-run-*"))
    names = {p.name for p in run.rglob("*")}
    assert any(n.startswith("report_metrics") and n.endswith(".table.json") for n in names)
    assert any(n.startswith("roc_pr") and n.endswith(".png") for n in names)
    # one media type per key: the interactive confusion matrix is a table, its picture a figure
    media = run / "files" / "media"
    assert list((media / "table" / "test").glob("confusion_matrix_*.table.json"))
    assert list((media / "images" / "test" / "figures").glob("confusion_matrix_*.png"))
    assert not list((media / "images" / "test").glob("confusion_matrix_*"))
    # the run config once, nested as composed (no flattened copy beside it), as W&B itself
    # reads it back from the run's transaction log
    wandb_cli = Path(sys.executable).parent / "wandb"
    proc = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    updates = [json.loads(line)["config"].get("update", {}) for line in proc.stdout.splitlines()
               if '"type":"config"' in line]  # fmt: skip
    keys = [k for u in updates for k in u if not k.startswith("_wandb")]
    assert len(keys) == len(set(keys))  # nothing logged twice
    assert not [k for k in keys if "/" in k]  # no flattened model/backbone beside model
    config = {k: v for u in updates for k, v in u.items()}
    assert config["model"]["backbone"] == "resnet18"


def test_mlflow_local_folder_by_default(tmp_path):
    train_here(tmp_path, "logger=mlflow", "debug=fast_dev_run", "data.source.num_patients=40")
    store = tmp_path / "logs" / "mlruns"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cxrlab")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and "model/backbone" in runs[0].data.params
    assert exp.artifact_location.endswith(str(store / "artifacts"))
    reports = [a.path for a in client.list_artifacts(runs[0].info.run_id, "report")]
    assert "report/metrics.json" in reports
    assert os.path.isdir(store / "artifacts")
