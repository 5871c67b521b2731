"""train.py end to end, as a user runs it (a subprocess per run), on a tiny phantom."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT, eval_here, run_process, run_train, shared_data_dir, train_here


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    run_train(
        tmp,
        "logger=wandb",
        "trainer.max_epochs=2",
        "data.task=multiclass",
        "data.source.num_patients=40",
    )
    return tmp


@pytest.mark.slow
def test_run_folder_has_config_checkpoints_metrics_and_splits(wandb_run):
    run = wandb_run / "run"
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    log = (run / "train.log").read_text()
    assert "GPU available" in log and "litlogger" not in log  # Lightning's info, not its ads
    m = json.loads((run / "test_metrics.json").read_text())
    assert m["split"] == "test" and m["images"] > 0 and m["patients"] > 0
    # offline (the tests' CXRLAB_OFFLINE=1), pretrained=auto trains from scratch and says so
    assert m["pretrained"]["pretrained"] is False and "CXRLAB_OFFLINE" in m["pretrained"]["reason"]
    assert (
        "Started from: none: trained from scratch" in (run / "report" / "model_card.md").read_text()
    )
    assert "starts from none: trained from scratch" in log
    assert m["classes"] == ["normal", "bacteria", "virus"]
    for k in (  # multi-class: overall values and macro/micro averages
        "test/accuracy",
        "test/balanced_accuracy",
        "test/macro/auroc",
        "test/macro/f1",
        "test/macro/sensitivity",
        "test/micro/specificity",
    ):
        assert k in m["metrics"]
    splits = pd.read_csv(run / "splits.csv")
    assert splits.groupby("patient_id")["split"].nunique().max() == 1
    preds = pd.read_csv(run / "report" / "predictions.csv")
    assert len(preds) == m["images"]
    assert set(preds["patient_id"]) <= set(splits[splits["split"] == "test"]["patient_id"])


@pytest.mark.slow
def test_checkpoint_carries_the_input_contract(wandb_run):
    ckpt = torch.load(
        wandb_run / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False
    )
    hp = ckpt["hyper_parameters"]
    assert hp["backbone"] == "densenet121_xrv"
    assert hp["class_names"] == ["normal", "bacteria", "virus"]
    assert hp["input_spec"] == {"channels": 1, "normalization": "xrv"}
    assert hp["preprocess"]["size"] == 32


@pytest.mark.slow
def test_wandb_offline_run_has_the_confusion_matrix_table(wandb_run):
    runs = list((wandb_run / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = list(runs[0].rglob("*confusion_matrix*.table.json"))
    assert tables, sorted(p.name for p in runs[0].rglob("*"))[:50]
    table = json.loads(tables[0].read_text())
    assert table["columns"][:2] == ["Actual", "Predicted"]
    assert {r[0] for r in table["data"]} <= {"normal", "bacteria", "virus"}
    assert list(runs[0].rglob("*pr_curve*.table.json"))


@pytest.mark.slow
def test_fast_dev_run_through_train_py(tmp_path):
    proc = train_here(tmp_path, "debug=fast_dev_run", "data.source.num_patients=40")
    assert "Testing the current weights" in proc.stderr + proc.stdout
    assert (tmp_path / "run" / "test_metrics.json").is_file()


@pytest.mark.slow
def test_a_sigkilled_run_resumes_as_one_run(tmp_path):
    """SIGKILL in the 3rd epoch, then the README's resume command: the run goes on in its own
    folder from the end of the 2nd epoch, keeps the best checkpoint of the whole run and tests
    it, and its CSV log and W&B run read as one run."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", CXRLAB_ROOT=str(ROOT),
               PYTHONPATH=str(ROOT / "tests"))  # fmt: skip
    base = [
        sys.executable, str(ROOT / "train.py"), "debug=default", "data.dataset_size=null",
        "data.source.num_patients=60", f"paths.data_dir={shared_data_dir()}",
        f"paths.log_dir={tmp_path / 'logs'}", "trainer.max_epochs=4", "model=resnet18",
        "callbacks.early_stopping=null", "logger=[csv,wandb]", "evaluation.bootstrap=20",
    ]  # fmt: skip
    killed = run_process(
        [*base, "+callbacks.kill._target_=faults.KillAt", "+callbacks.kill.epoch=2",
         "+callbacks.kill.batch=1"],
        env=env, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "debug" / "runs").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False, map_location="cpu")
    assert state["epoch"] == 1 and state["global_step"] == 6  # lost: only the running epoch
    assert not list(run.glob("checkpoints/.*.tmp"))

    resumed = run_process([*base, f"ckpt_path={last}"], env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stdout + resumed.stderr
    assert "Restored all states from the checkpoint" in out
    assert list((tmp_path / "logs" / "debug" / "runs").iterdir()) == [run]  # its own folder
    final = torch.load(last, weights_only=False, map_location="cpu")
    assert final["global_step"] == 12  # four epochs of 3 optimizer steps, counted once

    csv = pd.read_csv(run / "csv" / "metrics.csv")
    val = csv.dropna(subset=["val/auroc"])
    assert sorted(val["epoch"].astype(int)) == [0, 1, 2, 3]  # each epoch once
    best_epoch = int(val.loc[val["val/auroc"].idxmax(), "epoch"])  # first of equal maxima
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False, map_location="cpu")
    assert best["epoch"] == best_epoch  # the best of all four epochs, before or after the kill
    tested = json.loads((run / "test_metrics.json").read_text())
    assert Path(tested["checkpoint"]) == run / "checkpoints" / "best.ckpt"
    ids = {p.name.rsplit("-", 1)[1] for p in (run / "wandb").glob("offline-run-*")}
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2 and len(ids) == 1
    log = (run / "train.log").read_text()
    assert log.count("Selecting data") == 2 and "Resuming from" in log  # one log, both parts


def test_checkpoints_are_written_atomically(tmp_path):
    """A write that dies half-way (here: an object that fails to pickle) leaves the previous
    checkpoint whole and no temporary file."""
    from cxrlab.checkpoints import atomic_torch_save

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    path = tmp_path / "last.ckpt"
    atomic_torch_save({"epoch": 1, "w": torch.zeros(1000)}, path)
    with pytest.raises(RuntimeError, match="mid-write"):
        atomic_torch_save({"epoch": 2, "w": torch.zeros(1000), "x": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize(("setting", "synced"), [(None, True), ("1", True), ("0", False)])
def test_checkpoints_reach_the_disk_before_the_rename(setting, synced, tmp_path, monkeypatch):
    """Real runs fsync the checkpoint before renaming it into place (a crash of the machine
    keeps a whole file); CXRLAB_FSYNC=0 (scratch disks, this suite) skips only that."""
    import os

    from cxrlab.checkpoints import atomic_torch_save

    if setting is None:
        monkeypatch.delenv("CXRLAB_FSYNC", raising=False)
    else:
        monkeypatch.setenv("CXRLAB_FSYNC", setting)
    synced_files = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced_files.append(fd) or real_fsync(fd))
    atomic_torch_save({"epoch": 1}, tmp_path / "last.ckpt")
    assert bool(synced_files) is synced
    assert torch.load(tmp_path / "last.ckpt", weights_only=True) == {"epoch": 1}


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, key",
    [
        ("model.backbone=vgg11", "model.backbone='vgg11'"),
        ("model.loss.name=hinge", "model.loss.name='hinge'"),
        ("data.split.ratios.test=0.5", "data.split.ratios"),
        ("data.dataset_size=100000", "data.dataset_size=100000 is larger than the data"),
    ],
)
def test_bad_config_fails_early_naming_the_key(tmp_path, override, key):
    proc = train_here(tmp_path, override, "data.source.num_patients=40", check=False)
    assert proc.returncode == 2  # a user's mistake (test_configs.py: the one line train.py prints)
    assert key in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before any training


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("binary")
    train_here(
        tmp,
        "logger=csv",
        "trainer.max_epochs=2",
        "data.source.num_patients=40",
        "evaluation.bootstrap=200",
        "evaluation.threshold='sensitivity=0.9'",
    )
    return tmp


@pytest.mark.slow
def test_train_writes_the_report_with_a_validation_threshold(binary_run):
    run = binary_run / "run"
    rep = json.loads((run / "report" / "metrics.json").read_text())
    assert rep["split"] == "test" and rep["threshold"]["policy"] == "sensitivity=0.9"
    assert rep["threshold"]["chosen_on"] == "val"
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["cxrlab"]["threshold"] == pytest.approx(rep["threshold"]["value"])
    assert set(rep["data"]) == {"train", "val", "test"}
    for f in ("confusion_matrix.png", "roc_pr.png", "calibration.png", "model_card.md"):
        assert (run / "report" / f).is_file()
    summary = json.loads((run / "test_metrics.json").read_text())
    assert summary["metrics"]["test/auroc"] == rep["metrics"]["auroc"]["value"]


@pytest.mark.slow
def test_eval_py_reproduces_the_training_report(binary_run):
    ckpt = binary_run / "run" / "checkpoints" / "best.ckpt"
    eval_here(binary_run, f"ckpt_path={ckpt}")  # bootstrap settings come from the checkpoint
    a = json.loads((binary_run / "run" / "report" / "metrics.json").read_text())
    b = json.loads((binary_run / "eval" / "report" / "metrics.json").read_text())
    assert a["images"] == b["images"] and a["patients"] == b["patients"]
    assert a["threshold"] == b["threshold"]

    def close(x, y, path=""):
        if isinstance(x, dict):
            assert set(x) == set(y), path
            for k in x:
                close(x[k], y[k], f"{path}/{k}")
        elif isinstance(x, list):
            for i, (u, v) in enumerate(zip(x, y)):
                close(u, v, f"{path}[{i}]")
        elif x is None or y is None:
            assert x is None and y is None, path
        else:
            assert x == pytest.approx(y, abs=1e-6), path

    close(a["metrics"], b["metrics"])


@pytest.mark.slow
def test_eval_on_the_validation_split_logs_val_metrics(binary_run, tmp_path):
    """eval.py split=val: every logged metric says val (never test/), and it says where the
    report went."""
    ckpt = binary_run / "run" / "checkpoints" / "best.ckpt"
    proc = eval_here(tmp_path, f"ckpt_path={ckpt}", "split=val")
    logged = pd.read_csv(tmp_path / "eval" / "csv" / "metrics.csv")
    metric_columns = [c for c in logged.columns if "/" in c]
    assert "val/auroc" in metric_columns and all(c.startswith("val/") for c in metric_columns)
    report = json.loads((tmp_path / "eval" / "report" / "metrics.json").read_text())
    assert report["split"] == "val"
    assert f"Report of the val split ({report['images']} images" in proc.stderr + proc.stdout
    assert str(tmp_path / "eval" / "report") in proc.stderr + proc.stdout


@pytest.mark.slow
def test_eval_refuses_other_classes_and_foreign_files(binary_run, tmp_path):
    ckpt = binary_run / "run" / "checkpoints" / "best.ckpt"
    proc = eval_here(
        tmp_path,
        f"ckpt_path={ckpt}",
        "data=synthetic",
        "data.task=multiclass",
        "data.source.num_patients=40",
        check=False,
    )
    assert proc.returncode == 2
    assert (
        "['normal', 'bacteria', 'virus'] differ from the checkpoint's ['normal', 'pneumonia']"
        in proc.stderr
    )
    junk = tmp_path / "junk.ckpt"
    torch.save({"state_dict": {}}, junk)
    proc = eval_here(tmp_path, f"ckpt_path={junk}", check=False)
    assert proc.returncode == 2 and "not a cxrlab checkpoint" in proc.stderr


class Probe(pl.Callback):
    """What the training steps really got (train_in_process runs it in this process)."""

    seen: dict = {}

    def on_train_start(self, trainer, module):
        def record(net, args, out):
            if net.training:
                self.seen["input_channels_last"] = args[0].is_contiguous(
                    memory_format=torch.channels_last
                )
                self.seen["output_dtype"] = out.dtype  # bfloat16 under bf16 autocast

        module.net.register_forward_hook(record)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen["dtype"] = batch[0].dtype  # uint8 for the batch route; floats from workers


@pytest.mark.slow
def test_cpu_augmentation_bf16_and_channels_last_train(tmp_path):
    """The alternative data path and the speed options run end to end on the CPU, and are the
    ones actually used (an earlier version of this test found "bf16" in its own folder name)."""
    from conftest import train_in_process

    seen = Probe.seen
    overrides = ["debug=fast_dev_run", "data.dataset_size=null", "data.source.num_patients=40",
                 "augment=xray", "augment.device=cpu", "trainer.precision=bf16-mixed",
                 "model.channels_last=true", "data.num_workers=1",
                 "+callbacks.probe._target_=test_train.Probe"]  # fmt: skip
    metrics, objs = train_in_process(overrides, tmp_path)
    assert (tmp_path / "run" / "test_metrics.json").is_file()
    trainer, model, dm = objs["trainer"], objs["model"], objs["datamodule"]
    assert trainer.precision == "bf16-mixed"
    assert seen["output_dtype"] == torch.bfloat16  # the network ran in bf16 autocast
    assert dm.augment_cfg.device == "cpu" and seen["dtype"] == torch.float32  # augmented in workers
    assert model.channels_last and seen["input_channels_last"]


@pytest.mark.slow
def test_predictor_matches_the_test_phase_predictions(binary_run):
    """A checkpoint alone reproduces the training run's test probabilities and labels."""
    from cxrlab.inference.predictor import Predictor

    run = binary_run / "run"
    expected = pd.read_csv(run / "report" / "predictions.csv")
    predictor = Predictor.from_checkpoint(run / "checkpoints" / "best.ckpt", device="cpu")
    assert predictor.classes == ["normal", "pneumonia"]
    assert predictor.spec.size == 32
    got = predictor.predict_files(expected["path"], batch_size=7, progress=False)
    assert list(got["path"]) == list(expected["path"])
    for c in predictor.classes:
        assert np.abs(got[f"prob_{c}"] - expected[f"prob_{c}"]).max() < 1e-5
    assert list(got["prediction"]) == list(expected["prediction"])


@pytest.mark.slow
def test_predict_py_on_a_folder_with_a_broken_file(binary_run, tmp_path):
    import shutil

    sources = pd.read_csv(binary_run / "run" / "report" / "predictions.csv")["path"][:3]
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i, p in enumerate(sources):
        shutil.copy(p, folder / ("sub" if i else "") / Path(p).name)
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / ".DS_Store").write_bytes(b"\0")
    out = tmp_path / "preds.csv"
    cmd = [
        sys.executable,
        str(ROOT / "predict.py"),
        "--ckpt",
        str(binary_run / "run" / "checkpoints" / "best.ckpt"),
        str(folder),
        "--out",
        str(out),
    ]
    proc = run_process(cmd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 4  # three images and the broken file; .DS_Store is not an image
    broken = df[df["path"].str.endswith("broken.png")]
    assert "not a decodable image" in broken["error"].iloc[0]
    ok = df[df["error"] == ""]
    assert len(ok) == 3 and set(ok["prediction"]) <= {"normal", "pneumonia"}
    assert np.allclose(ok["prob_normal"].astype(float) + ok["prob_pneumonia"].astype(float), 1)
    assert "1 could not be read" in proc.stderr


@pytest.mark.slow
def test_train_returns_the_best_checkpoints_validation_metric(tmp_path):
    """What a sweep optimizes: the monitored value of the checkpoint that gets tested."""
    from conftest import compose_train
    from omegaconf import open_dict

    from cxrlab.training import train

    cfg = compose_train(
        [
            "debug=default",
            "data.dataset_size=null",
            "trainer.max_epochs=3",
            "data.source.num_patients=40",
            f"paths.data_dir={shared_data_dir()}",
            "callbacks.early_stopping=null",
            "callbacks.progress_bar=null",
            "evaluation.bootstrap=20",
        ],
        tmp_path,
    )
    with open_dict(cfg):
        del cfg["hydra"]  # as a task function receives it
    metrics, objects = train(cfg)
    cb = objects["trainer"].checkpoint_callback
    assert cb.monitor == cfg.optimized_metric == "val/auroc"
    assert metrics["val/auroc"] == pytest.approx(float(cb.best_model_score))
    ckpt = torch.load(cb.best_model_path, weights_only=True, map_location="cpu")
    stored = ckpt["callbacks"][next(k for k in ckpt["callbacks"] if "ModelCheckpoint" in k)]
    assert metrics["val/auroc"] == pytest.approx(float(stored["best_model_score"]))
