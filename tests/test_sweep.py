"""`python train.py -m hparams_search=optuna` end to end: failures, resume, SIGKILL, pruning,
parallel workers on PostgreSQL, DDP trials. Tiny phantom, a few short epochs per trial."""

import html
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import optuna
import pandas as pd
import pytest
import yaml
from conftest import (
    ROOT,
    free_port,
    run_process,
    script_env,
    shared_data_dir,
    start_process,
    wandb_records,
)
from optuna.trial import TrialState

# every test here trains, serves or sweeps: the inner loop (pytest -m "not slow") skips it
pytestmark = pytest.mark.slow

TINY = [
    "debug=default",
    "model=resnet18",  # what a sweep does is the subject here, not the network
    "data.source.num_patients=60",  # a small phantom, all of it
    "data.dataset_size=null",
    "evaluation.bootstrap=50",
    "hydra.sweeper.params=null",  # each test names its own (small) search space
    "hydra.sweeper.plots=false",
]

# the study's name: <task_name>-<experiment or "default">-<hparams_search choice>
FAULTS = "debug-default-faults"
# trials asked for first, in this order: a config error, a diverging run, a good run
FAULTS_CONFIG = """# @package _global_
defaults:
  - optuna
  - _self_
hydra:
  sweeper:
    enqueue:
      - {model.optimizer.name: bogus, model.optimizer.lr: 0.001}
      - {model.optimizer.name: adam, model.optimizer.lr: 1.0e+30}
      - {model.optimizer.name: adam, model.optimizer.lr: 0.001}
"""


def sweep_cmd(tmp: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        f"paths.data_dir={shared_data_dir()}",  # one phantom for the session
        f"paths.log_dir={tmp / 'logs'}",
        *TINY,
        *overrides,
    ]


def sweep_env() -> dict:
    return script_env()


def run_sweep(tmp: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = run_process(sweep_cmd(tmp, *overrides), env=sweep_env(), timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"sweep failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def load(tmp: Path, name: str = "debug-default-optuna", storage: str | None = None):
    url = storage or f"sqlite:///{tmp / 'logs' / 'optuna' / 'studies.db'}"
    return optuna.load_study(study_name=name, storage=url)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    return tmp_path_factory.mktemp("sweeps")


@pytest.fixture(scope="module")
def fault_sweep(sweeps):
    """Three enqueued trials (config error, NaN, good) with every logger; then a re-run."""
    tmp = sweeps / "faults"
    conf = tmp / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "faults.yaml").write_text(FAULTS_CONFIG)
    common = [f"hydra.searchpath=[file://{tmp / 'conf'}]", "hparams_search=faults"]
    run_sweep(
        tmp,
        *common,
        "model.optimizer.name=choice(adam,bogus)",
        "model.optimizer.lr=choice(0.001,1e30)",
        "trainer.max_epochs=2",
        "logger=many",
        "hydra.sweeper.n_trials=1",
    )
    table = pd.read_csv(tmp / "logs" / "optuna" / FAULTS / "trials.csv")
    best = yaml.safe_load((tmp / "logs" / "optuna" / FAULTS / "best.yaml").read_text())
    # the same study, one more trial, a search space without the faults
    second = run_sweep(
        tmp,
        *common,
        "hydra.sweeper.enqueue=null",
        "model.dropout=interval(0.0,0.5)",
        "trainer.max_epochs=1",
        "logger=csv",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.keep_checkpoints=1",
    )
    return tmp, best, table, second


def test_failing_and_diverging_trials_are_recorded_and_the_sweep_goes_on(fault_sweep):
    tmp, best, table, _ = fault_sweep
    rows = table.set_index("number")
    assert list(rows.loc[[0, 1, 2], "state"]) == ["FAIL", "FAIL", "COMPLETE"]
    assert "model.optimizer.name" in rows.loc[0, "fail_reason"]  # the config error, by key
    assert "nan" in rows.loc[1, "fail_reason"].lower()  # the diverged run
    folder = tmp / "logs" / "optuna" / FAULTS
    assert (folder / "trial_2" / "test_metrics.json").is_file()
    assert best["best_trial"] == 2 and best["trials"]["fail"] == 2
    assert "model.optimizer.lr=0.001" in best["retrain"] and "hparams_search" not in best["retrain"]


def test_rerunning_the_command_continues_the_study(fault_sweep):
    tmp, _, _, second = fault_sweep
    study = load(tmp, FAULTS)
    states = [t.state for t in study.trials]
    assert states[:3] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 2
    assert len(study.trials) == 4  # n_trials counts the whole study: one more trial
    assert "1 complete, 0 pruned, 2 failed so far" in second.stderr + second.stdout
    folder = tmp / "logs" / "optuna" / FAULTS
    assert {p.name for p in folder.glob("trial_*")} >= {"trial_1", "trial_2", "trial_3"}


def test_only_the_best_trials_keep_their_checkpoints(fault_sweep):
    """keep_checkpoints=1: of two complete trials and a diverged one, only the best trial's
    folder keeps its *.ckpt files; the others keep everything else."""
    tmp, _, _, second = fault_sweep
    best = load(tmp, FAULTS).best_trial.number
    folder = tmp / "logs" / "optuna" / FAULTS
    with_ckpt = {p.relative_to(folder).as_posix() for p in folder.rglob("*.ckpt")}
    assert with_ckpt == {
        f"trial_{best}/checkpoints/best.ckpt",
        f"trial_{best}/checkpoints/last.ckpt",
    }
    for n in (2, 3):
        assert (folder / f"trial_{n}" / "test_metrics.json").is_file()
    assert "checkpoint files" in second.stderr + second.stdout  # the removal is logged


def test_each_trial_is_its_own_run_in_every_logger(fault_sweep):
    """W&B and MLflow runs are named after study and trial; a failed trial's run is closed
    (the next trial in the same process must not log into it)."""
    mlflow = pytest.importorskip("mlflow")
    tmp, _, first_table, _ = fault_sweep
    folder = tmp / "logs" / "optuna" / FAULTS
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'logs' / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cxrlab").experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    diverged, good = (
        by_name[f"{FAULTS}-trial-1"],
        by_name[f"{FAULTS}-trial-2"],
    )
    assert diverged.info.status == "FAILED" and good.info.status == "FINISHED"
    assert good.data.tags["optuna_study"] == FAULTS
    assert good.data.tags["optuna_trial"] == "2"
    assert good.data.params["optuna_trial/number"] == "2"
    for n in (1, 2):
        wandb_runs = list((folder / f"trial_{n}" / "wandb").glob("offline-run-*"))
        assert len(wandb_runs) == 1, f"trial {n}: {wandb_runs}"
    ids = {
        p.name.split("-")[-1]
        for n in (1, 2)
        for p in (folder / f"trial_{n}" / "wandb").glob("offline-run-*")
    }
    assert len(ids) == 2
    # the failed trial's W&B run is marked so; the study has a summary run with every trial
    states = {n: wandb_records(next((folder / f"trial_{n}" / "wandb").glob("offline-run-*")))
              for n in (1, 2)}  # fmt: skip
    assert any("failed" in r.get("tags", []) for r in states[1]["run"])  # updated
    assert states[1]["exit"][0]["exit_code"] == 1
    assert states[2]["exit"][0]["exit_code"] == 0
    # the first command logged to W&B (the second to CSV only): its study summary run
    (summary_run,) = (folder / "wandb").glob("offline-run-*")
    records = wandb_records(summary_run)
    assert records["run"][0]["display_name"] == f"{FAULTS}-summary"
    assert records["run"][0]["run_group"] == FAULTS
    (trials,) = (summary_run / "files" / "media" / "table" / "study").glob("trials_*.table.json")
    table = json.loads(trials.read_text())
    assert len(table["data"]) == len(first_table)  # every trial at the end of that command
    assert {"number", "state", "value", "params.model.optimizer.lr"} <= set(table["columns"])


def test_the_dashboard_shows_the_study_in_a_browser(fault_sweep):
    """`make dashboard`'s command (optuna-dashboard on the study storage, 127.0.0.1) serves
    the fault sweep's study; headless Chromium loads its pages, and the rendered pages name
    the study and count its trials. The screenshot is kept in logs/test-artifacts/."""
    if shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("needs the dashboard extra: pip install -e '.[dashboard]'")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (.ci/chromium.sh)")
        pytest.skip("needs Chromium (Debian: apt-get install chromium)")
    tmp, *_ = fault_sweep
    db = tmp / "logs" / "optuna" / "studies.db"
    study = load(tmp, FAULTS)
    port = free_port()
    make = run_process(["make", "-n", "dashboard", f"STORAGE=sqlite:///{db}",
                        f"DASHBOARD_PORT={port}"], cwd=ROOT)  # fmt: skip
    (command,) = [line for line in make.stdout.splitlines() if "optuna-dashboard" in line]
    server = start_process(shlex.split(command), cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()
            try:
                if httpx.get(f"{url}/api/studies", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "optuna-dashboard did not answer"
                time.sleep(0.5)
        study_id = study._study_id

        def rendered(page: str, *extra: str) -> str:
            proc = subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--window-size=1280,900",
                 "--virtual-time-budget=15000", *extra, f"{url}{page}"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", proc.stdout)))

        listing = rendered("/dashboard", "--dump-dom")
        assert FAULTS in listing
        trials = rendered(f"/dashboard/studies/{study_id}/trials", "--dump-dom")
        assert f"{len(study.trials)} Trials" in trials, trials[:2000]
        for t in study.trials:
            assert f"Trial {t.number}" in trials
        shots = ROOT / "logs" / "test-artifacts"
        shots.mkdir(parents=True, exist_ok=True)
        shot = shots / "optuna-dashboard.png"
        shot.unlink(missing_ok=True)
        rendered(f"/dashboard/studies/{study_id}", f"--screenshot={shot}")
        assert shot.stat().st_size > 10_000
    finally:
        server.terminate()
        server.communicate(timeout=30)


# lightning-hydra-template's configs/hparams_search/mnist_optuna.yaml (written for
# hydra-optuna-sweeper), with only the metric and the parameter names changed to cxrlab's
LHT_OPTUNA = """# @package _global_

# example hyperparameter optimization of some experiment with Optuna:
# python train.py -m hparams_search=mnist_optuna experiment=example

defaults:
  - override /hydra/sweeper: optuna

# choose metric which will be optimized by Optuna
# make sure this is the correct name of some metric logged in lightning module!
optimized_metric: "val/auroc"

# here we define Optuna hyperparameter search
# it optimizes for value returned from function with @hydra.main decorator
# docs: https://hydra.cc/docs/next/plugins/optuna_sweeper
hydra:
  mode: "MULTIRUN" # set hydra to multirun by default if this config is attached

  sweeper:
    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper

    # storage URL to persist optimization results
    # for example, you can use SQLite if you set 'sqlite:///example.db'
    storage: null

    # name of the study to persist optimization results
    study_name: null

    # number of parallel workers
    n_jobs: 1

    # 'minimize' or 'maximize' the objective
    direction: maximize

    # total number of runs that will be executed
    n_trials: 20

    # choose Optuna hyperparameter sampler
    # you can choose bayesian sampler (tpe), random search (without optimization), grid sampler, and others
    # docs: https://optuna.readthedocs.io/en/stable/reference/samplers.html
    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 1234
      n_startup_trials: 10 # number of random sampling runs before optimization starts

    # define hyperparameter search space
    params:
      model.optimizer.lr: interval(0.0001, 0.1)
      data.batch_size: choice(32, 64, 128, 256)
      model.dropout: choice(0.0, 0.1, 0.2)
      augment.rotation: choice(0.0, 5.0, 10.0)
      augment.scaling: choice(0.0, 0.05, 0.1, 0.2)
"""


def test_a_lightning_hydra_template_optuna_config_runs_as_written(sweeps):
    """The file a lightning-hydra-template user brings: `override /hydra/sweeper: optuna`,
    the plugin's `_target_`, `storage: null`, `study_name: null`, multirun by its own
    `hydra.mode` (no -m); the sweep says what n_trials means here."""
    tmp = sweeps / "lht"
    conf = tmp / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "mnist_optuna.yaml").write_text(LHT_OPTUNA)
    cmd = [a for a in sweep_cmd(tmp) if a not in ("-m", "hydra.sweeper.params=null")]
    proc = run_process(
        [*cmd, f"hydra.searchpath=[file://{tmp / 'conf'}]", "hparams_search=mnist_optuna",
         "hydra.sweeper.n_trials=2", "trainer.max_epochs=1", "logger=csv"],
        env=sweep_env(), timeout=900,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "n_trials=2 is the study's total" in out and "study_name is null" in out
    (table,) = (tmp / "logs").rglob("trials.csv")
    trials = pd.read_csv(table)
    assert list(trials["state"]) == ["COMPLETE", "COMPLETE"]
    for name in ("model.optimizer.lr", "data.batch_size", "model.dropout", "augment.scaling"):
        assert trials[f"params.{name}"].notna().all(), trials.columns
    assert trials["value"].between(0, 1).all()  # val/auroc of each trial's best checkpoint


def test_pruned_trial_stops_early_in_a_separate_process(sweeps):
    """The pruner stops a trial at an epoch; the trial runs through submitit's local launcher,
    i.e. in another process that finds its trial in the SQLite storage (the SLURM path)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    tmp = sweeps / "prune"
    run_sweep(
        tmp,
        "hparams_search=optuna",
        "hydra/launcher=submitit_local",
        "model.dropout=interval(0.0,0.5)",
        "trainer.max_epochs=4",
        "hydra.sweeper.n_trials=1",
        # prune whatever is reported from the second epoch on (a deterministic pruner)
        "hydra.sweeper.pruner=null",
        "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.01,n_warmup_steps:1}",
        "hydra.sweeper.report=last",  # not the default: shows the setting itself arrives
    )
    (trial,) = load(tmp).trials
    assert trial.state == TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [0, 1]  # stopped after epoch 1 of 4
    run = Path(trial.user_attrs["run_dir"])
    # report=last reached the trial's own process: it told the pruner each epoch's own value
    assert (
        "val/auroc reported after every epoch (that epoch's value)"
        in (run / "train.log").read_text()
    )
    epochs = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["val/auroc"])
    assert [trial.intermediate_values[k] for k in (0, 1)] == pytest.approx(
        list(epochs["val/auroc"])
    )
    assert not (run / "test_metrics.json").exists()  # pruned trials are not tested
    # the default hydra.sweeper.keep_checkpoints keeps only complete trials' checkpoints
    assert (run / "checkpoints").is_dir() and not list(run.rglob("*.ckpt"))


def test_sigkilled_sweep_leaves_a_usable_study_and_the_rerun_retries_the_trial(sweeps):
    tmp = sweeps / "kill"
    args = ["hparams_search=optuna", "model.dropout=interval(0.0,0.5)", "hydra.sweeper.pruner=null"]
    proc = start_process(
        sweep_cmd(tmp, *args, "trainer.max_epochs=50", "hydra.sweeper.n_trials=1"),
        env=sweep_env(),
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # until the trial has reported an epoch
            time.sleep(2)
            try:
                trials = load(tmp).trials
            except Exception:  # the study does not exist yet
                continue
            if trials and trials[0].intermediate_values:
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
        else:
            raise AssertionError("no epoch reported within 300 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (killed,) = load(tmp).trials
    assert killed.state == TrialState.RUNNING  # what a killed process leaves behind

    # the same command again, one trial further: it retries the killed trial first, then
    # samples; a sampler seeded as in the first run would propose trial 0's parameters again,
    # a continued study's sampler is seeded anew and never repeats a set
    rerun = run_sweep(tmp, *args, "trainer.max_epochs=1", "hydra.sweeper.n_trials=2")
    study = load(tmp)
    first, retry, sampled = study.trials
    assert first.state == TrialState.FAIL and "killed" in first.user_attrs["fail_reason"]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["retry_of"] == 0 and retry.params == first.params
    assert "fail_reason" not in retry.user_attrs  # the retry did not fail
    # no Optuna FutureWarning (RetryFailedTrialCallback); other libraries' warnings may pass
    assert not [w for w in rerun.stderr.splitlines() if "deprecated" in w and "optuna" in w]
    assert "sampler seed" in rerun.stderr + rerun.stdout
    assert sampled.state == TrialState.COMPLETE and sampled.params != retry.params
    assert not [t for t in study.trials if "duplicate_of" in t.user_attrs]  # none even asked
    table = pd.read_csv(tmp / "logs" / "optuna" / "debug-default-optuna" / "trials.csv")
    assert table.set_index("number")["fail_reason"].notna().to_dict() == {
        0: True,
        1: False,
        2: False,
    }


@pytest.fixture(scope="module")
def postgres_url():
    """A real PostgreSQL server on 127.0.0.1 (.ci/run starts it; started here if missing)."""
    url = os.environ.get("CXRLAB_TEST_POSTGRES_URL")
    if not url:
        proc = subprocess.run(
            ["bash", str(ROOT / ".ci" / "postgres.sh")], capture_output=True, text=True
        )
        if proc.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"PostgreSQL could not be started in CI:\n{proc.stderr[-2000:]}")
            pytest.skip(f"no PostgreSQL here: {proc.stderr.strip()[-300:]}")
        url = proc.stdout.strip().splitlines()[-1]
    pytest.importorskip("psycopg")  # SQLAlchemy 2.1: postgresql:// means psycopg 3
    return url


def test_two_workers_share_one_postgresql_study(sweeps, postgres_url):
    tmp = sweeps / "parallel"
    name = f"parallel-{uuid.uuid4().hex[:8]}"
    args = [
        "hparams_search=optuna",
        f"hydra.sweeper.storage={postgres_url}",
        f"hydra.sweeper.study_name={name}",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.pruner=null",
        "model.optimizer.lr=tag(log,interval(1e-4,1e-2))",
        "model.dropout=interval(0.0,0.5)",
        "trainer.max_epochs=1",
    ]
    # one seed per worker (docs/sweeps.md): the same seed would propose the same parameters
    workers = [
        start_process(sweep_cmd(tmp, *args, f"hydra.sweeper.sampler.seed={seed}"), env=sweep_env())
        for seed in (1, 2)
    ]
    outputs = ["\n".join(w.communicate(timeout=900)) for w in workers]
    for w, out in zip(workers, outputs):
        assert w.returncode == 0, out[-4000:]
    trials = load(tmp, name, storage=postgres_url).trials
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == 4, [(t.number, t.state, t.user_attrs) for t in trials]
    assert len({t.number for t in trials}) == len(trials)
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 4  # no duplicates
    assert len({t.user_attrs["pid"] for t in counted}) == 2  # both workers ran trials
    for t in counted:
        assert (Path(t.user_attrs["run_dir"]) / "test_metrics.json").is_file()


def test_sweep_trials_can_train_with_ddp(sweeps):
    """Two DDP trials in one sweep process: the second must start a fresh process group."""
    tmp = sweeps / "ddp"
    run_sweep(
        tmp,
        "hparams_search=optuna",
        "trainer=ddp_cpu",
        "model.dropout=interval(0.0,0.5)",
        "trainer.max_epochs=1",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.pruner=null",
    )
    trials = load(tmp).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        run = Path(t.user_attrs["run_dir"])
        assert (run / "test_metrics.json").is_file()
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
        # the second rank ran this trial's own config, in this trial's folder
        assert (run / "train_ddp_process_1.log").is_file()
        child = (run / "train_ddp_process_1.log").read_text()
        assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in child
    assert len(trials) == 2  # a rank never started a sweep (or a trial) of its own
    assert not (tmp / "logs" / "debug").exists()  # no stray run folders


# ---- cross-validation and multi-objective studies -------------------------------------------


def test_kfold_multirun_summarizes_every_fold_and_the_out_of_fold_predictions(sweeps):
    """`-m data.split.folds=3 'data.split.fold=range(3)'`: the plain run's test split held out in
    every fold, the rest in patient-grouped folds, and the multirun's summary: per-fold metrics,
    mean and sd, and one out-of-fold report that scikit-learn recomputes."""
    from sklearn.metrics import roc_auc_score

    from cxrlab.data.selection import patient_grouped_split
    from cxrlab.evaluation.cv import main as cv_main

    tmp, folder = sweeps / "kfold", sweeps / "kfold" / "multirun"
    cmd = [a for a in sweep_cmd(tmp) if not a.startswith("hydra.sweeper.")]
    run_process(
        [*cmd, "data.split.folds=3", "data.split.fold=range(3)", f"hydra.sweep.dir={folder}",
         "logger=csv"],
        env=sweep_env(), timeout=900,
    )  # fmt: skip
    splits = [pd.read_csv(folder / str(i) / "splits.csv") for i in range(3)]
    plain = patient_grouped_split(splits[0], {"train": 0.6, "val": 0.2, "test": 0.2}, seed=42)
    for i, s in enumerate(splits):
        assert s["split"].eq("test").equals(plain.eq("test"))  # the plain run's test split
        assert s["fold"].equals(splits[0]["fold"]) and s["split"].eq("val").equals(s["fold"] == i)
    rest = splits[0][splits[0]["split"] != "test"]
    assert rest.groupby("patient_id")["fold"].nunique().max() == 1  # no patient in two folds
    oof_runs = pd.concat([pd.read_csv(folder / str(i) / "oof_predictions.csv") for i in range(3)])
    assert sorted(oof_runs["path"]) == sorted(rest["path"])  # every train+val image once

    cv = folder / "cv"
    summary = json.loads((cv / "summary.json").read_text())
    assert summary["done"] == [0, 1, 2] and summary["missing"] == []
    folds = pd.read_csv(cv / "folds.csv")
    for i, row in folds.iterrows():
        part = oof_runs[oof_runs["fold"] == i]
        assert row["val/auroc"] == pytest.approx(
            roc_auc_score(part["label"] == "pneumonia", part["prob_pneumonia"]), abs=1e-9
        )
    assert summary["mean"]["val/auroc"] == pytest.approx(folds["val/auroc"].mean())
    assert summary["std"]["test/auroc"] == pytest.approx(folds["test/auroc"].std())
    report = json.loads((cv / "oof" / "metrics.json").read_text())
    pooled = pd.read_csv(cv / "oof" / "predictions.csv")
    auroc = report["metrics"]["auroc"]
    assert report["split"] == "oof" and report["images"] == len(rest)
    assert auroc["value"] == pytest.approx(
        roc_auc_score(pooled["label"] == "pneumonia", pooled["prob_pneumonia"]), abs=1e-6
    )
    assert auroc["ci95"][0] <= auroc["value"] <= auroc["ci95"][1]
    assert "optimistic" in report["threshold"]["chosen_on"]
    assert "3 of 3 folds" in (cv / "summary.md").read_text()
    # a fold lost: the summary written again says so
    (folder / "2" / "oof_predictions.csv").unlink()
    assert cv_main([str(folder), "--bootstrap", "20"]) == 0
    assert json.loads((cv / "summary.json").read_text())["missing"] == [2]


def test_a_cross_validated_multi_objective_sweep_keeps_its_pareto_front(sweeps):
    """hydra.sweeper.cv=true: each trial trains both folds and is told their mean; two
    objectives, each from the fold's best checkpoint (by the first); best.yaml lists the
    Pareto front, each trial folder has its cross-validation summary."""
    tmp = sweeps / "cv_multi"
    run_sweep(
        tmp,
        "hparams_search=optuna",
        "model.dropout=interval(0.0,0.5)",
        "trainer.max_epochs=2",
        "hydra.sweeper.n_trials=2",
        "data.split.folds=2",
        "hydra.sweeper.cv=true",
        "optimized_metric=[val/auroc,val/loss]",
        "hydra.sweeper.direction=[maximize,minimize]",
        "hydra.sweeper.plots=true",
    )
    study = load(tmp)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val/auroc", "val/loss"]
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        run = Path(t.user_attrs["run_dir"])
        per_fold = []
        for fold in (0, 1):
            epochs = pd.read_csv(run / f"fold_{fold}" / "csv" / "metrics.csv")
            epochs = epochs.dropna(subset=["val/auroc"]).reset_index(drop=True)
            best = epochs.loc[epochs["val/auroc"].idxmax()]  # the checkpoint's epoch
            per_fold.append([best["val/auroc"], best["val/loss"]])
        for got, want in zip(t.user_attrs["fold_values"], per_fold, strict=True):
            assert got == pytest.approx(want, abs=1e-6)
        assert t.values == pytest.approx([sum(v[k] for v in per_fold) / 2 for k in (0, 1)])
        summary = json.loads((run / "cv" / "summary.json").read_text())
        assert summary["done"] == [0, 1] and summary["oof"]["images"] > 0
    best = yaml.safe_load(
        (tmp / "logs" / "optuna" / "debug-default-optuna" / "best.yaml").read_text()
    )
    front = sorted(t.number for t in study.best_trials)
    assert [p["trial"] for p in best["pareto_front"]] == front
    assert set(best["pareto_front"][0]["values"]) == {"val/auroc", "val/loss"}
    assert "'data.split.fold=range(2)'" in best["pareto_front"][0]["retrain"]
    assert (
        tmp / "logs" / "optuna" / "debug-default-optuna" / "plots" / "pareto_front.png"
    ).is_file()


def test_a_pruned_fold_ends_its_cross_validated_trial(sweeps):
    """The pruner stops fold 0 after its last epoch (fold 1 still to save): fold 1 never
    trains and the trial is pruned."""
    tmp = sweeps / "cv_prune"
    run_sweep(
        tmp,
        "hparams_search=optuna",
        "model.dropout=interval(0.0,0.5)",
        "trainer.max_epochs=2",
        "hydra.sweeper.n_trials=1",
        "data.split.folds=2",
        "hydra.sweeper.cv=true",
        "hydra.sweeper.pruner=null",
        "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:1.01,n_warmup_steps:1}",
    )
    (trial,) = load(tmp).trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_in_fold"] == 0
    assert sorted(trial.intermediate_values) == [0, 1]
    run = Path(trial.user_attrs["run_dir"])
    assert (run / "fold_0" / "checkpoints").is_dir()
    assert not (run / "fold_1" / "checkpoints").exists()  # never trained
    assert "Training" not in (run / "fold_1" / "train.log").read_text()
