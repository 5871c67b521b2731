"""trainer=ddp_cpu: two gloo processes through train.py, as a user starts them."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import eval_here, run_train

# every test here trains, serves or sweeps: the inner loop (pytest -m "not slow") skips it
pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    os.environ["PYTHONPATH"] = f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    run_train(
        tmp,
        "trainer=ddp_cpu",
        "logger=many",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=1.0",
        "trainer.limit_val_batches=1.0",
        "trainer.limit_test_batches=1.0",
        "data.source.num_patients=40",
        "evaluation.bootstrap=100",
        "+callbacks.probe._target_=ddp_probe.RecordTrainRows",
        f"+callbacks.probe.out_dir={tmp / 'probe'}",
    )
    return tmp


def test_one_run_folder_one_checkpoint_pair_one_report(ddp_run):
    assert sorted(p.name for p in (ddp_run / "run" / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]
    assert (ddp_run / "run" / "report" / "metrics.json").is_file()
    assert not (ddp_run / "logs").exists() or not any((ddp_run / "logs").rglob("*.ckpt"))
    assert len(list((ddp_run / "run").glob(".hydra"))) == 1
    logs = sorted(p.name for p in (ddp_run / "run").glob("*.log"))
    assert logs == ["train.log", "train_ddp_process_1.log"]


def test_every_logger_records_one_run(ddp_run):
    run = ddp_run / "run"
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    # media from rank 0 only: each validation's charts once, the tables once
    media = next((run / "wandb").glob("offline-run-*")) / "files" / "media" / "table"
    assert len(list((media / "val").glob("confusion_matrix_table_*.table.json"))) == 2
    assert len(list((media / "test").glob("predictions_*.table.json"))) == 1
    # TensorBoard: one folder, files of one process (rank 0 reopens its writer per stage)
    events = list((run / "tensorboard").rglob("events.out.tfevents*"))
    assert len({e.parent for e in events}) == 1
    assert len({e.name.split(".")[-2] for e in events}) == 1  # the writer's process id
    assert (run / "csv" / "metrics.csv").is_file()
    mlflow = pytest.importorskip("mlflow")
    store = ddp_run / "logs" / "mlruns" / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    exp = client.get_experiment_by_name("cxrlab")
    assert len(client.search_runs([exp.experiment_id])) == 1


def test_ranks_train_on_disjoint_shards_covering_the_split(ddp_run):
    for epoch in (0, 1):
        r0 = json.loads((ddp_run / "probe" / f"rank0_epoch{epoch}.json").read_text())
        r1 = json.loads((ddp_run / "probe" / f"rank1_epoch{epoch}.json").read_text())
        assert r0 and r1 and not set(r0) & set(r1)
    e0 = json.loads((ddp_run / "probe" / "rank0_epoch0.json").read_text())
    e1 = json.loads((ddp_run / "probe" / "rank0_epoch1.json").read_text())
    assert e0 != e1  # reshuffled each epoch


def test_two_process_test_metrics_equal_one_process_evaluation(ddp_run):
    ckpt = ddp_run / "run" / "checkpoints" / "best.ckpt"
    # the one-process side in this process: what it proves is one process against two
    eval_here(ddp_run, f"ckpt_path={ckpt}", "evaluation.bootstrap=100", "accelerator=cpu")
    a = json.loads((ddp_run / "run" / "report" / "metrics.json").read_text())
    b = json.loads((ddp_run / "eval" / "report" / "metrics.json").read_text())
    assert a["images"] == b["images"]  # every test image once: no padding duplicates
    for k in ("auroc", "accuracy", "sensitivity", "specificity", "brier"):
        assert a["metrics"][k]["value"] == pytest.approx(b["metrics"][k]["value"], abs=1e-6), k
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert state["cxrlab"]["threshold"] == pytest.approx(a["threshold"]["value"])


def test_class_balanced_sampler_and_staged_finetuning_under_ddp(tmp_path):
    """data.sampler=weighted with two processes: each rank draws its own half of one
    class-balanced epoch (the phantom is 3:1 pneumonia:normal), new draws every epoch.
    model.finetune.policy=staged in the same run: under DDP the frozen blocks keep requiring
    gradients (the reducer waits for them) and their gradients are dropped on every rank."""
    os.environ["PYTHONPATH"] = f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    run_train(
        tmp_path,
        "trainer=ddp_cpu",
        "data.sampler=weighted",
        "data.epoch_size=128",
        "data.batch_size=16",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=1.0",
        "data.source.num_patients=40",
        "evaluation.bootstrap=20",
        "test=false",
        "model.finetune.policy=staged",
        "model.finetune.unfreeze_at_epoch=1",
        "model.finetune.unfreeze_blocks=1",
        "+callbacks.probe._target_=ddp_probe.RecordTrainRows",
        f"+callbacks.probe.out_dir={tmp_path / 'probe'}",
        "+callbacks.blocks._target_=ddp_probe.RecordBlockChanges",
        f"+callbacks.blocks.out_dir={tmp_path / 'probe'}",
    )
    probe = tmp_path / "probe"
    assert (
        "frozen blocks' gradients are computed, then dropped"
        in (tmp_path / "run" / "train.log").read_text()
    )
    for rank in (0, 1):  # [5 backbone blocks..., head]
        changed = [
            json.loads((probe / f"blocks_rank{rank}_epoch{e}.json").read_text()) for e in (0, 1)
        ]
        assert changed == [[False] * 5 + [True], [False] * 4 + [True, True]]
    draws = {}
    for epoch in (0, 1):
        for rank in (0, 1):
            rows = json.loads((probe / f"rank{rank}_epoch{epoch}.json").read_text())
            labels = json.loads((probe / f"labels_rank{rank}_epoch{epoch}.json").read_text())
            assert len(rows) == 64  # half of the 128-draw epoch each
            draws[rank, epoch] = rows
        both = json.loads((probe / f"labels_rank0_epoch{epoch}.json").read_text()) + labels
        assert 0.35 < sum(both) / len(both) < 0.65  # balanced, not 0.75
        assert draws[0, epoch] != draws[1, epoch]
    assert draws[0, 0] != draws[0, 1]
