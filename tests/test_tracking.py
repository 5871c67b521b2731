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
from conftest import free_port, run_train, train_here

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
