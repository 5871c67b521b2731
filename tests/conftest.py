"""Shared test setup: the environment every test runs in (no network, W&B offline), and the
helpers the test files share (composing configs, running entry points in a subprocess or in
this process, free loopback ports, the tiny phantom)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
os.environ.setdefault("CXRLAB_ROOT", str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# no test reaches the internet: pretrained weights are served from loopback (test_weights.py)
os.environ.setdefault("CXRLAB_OFFLINE", "1")
# checkpoints renamed into place without waiting for the disk (fsync is for power loss, which no
# test makes; a kill loses nothing written): a quarter second per 130 MB checkpoint here, and
# the suite writes hundreds (test_train.py checks that real runs fsync)
os.environ.setdefault("CXRLAB_FSYNC", "0")
# Under pytest-xdist each core already runs a test: one intra-op thread per process (inherited
# by the entry points a test starts) rather than a thread per core in every process, where the
# workers' OpenMP threads contend for the same cores and spin while they wait for each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


# The test modules that take longest (seconds of one core each, measured with --durations=0 on
# 2 cores), run first: pytest-xdist (--dist loadscope --no-loadscope-reorder) hands whole
# modules to workers in this order, so the long ones do not start last and leave one worker
# idle at the end (longest first is the classic makespan heuristic). Order only; no test
# depends on it.
LONGEST_FIRST = (
    "test_container.py",  # a first build of the image: about 7 minutes (none without podman)
    "test_sweep.py",
    "test_train.py",
    "test_recipes.py",
    "test_serve.py",
    "test_ddp.py",
    "test_doc_commands.py",
    "test_tracking.py",
    "test_datasets.py",
    "test_explore.py",
    "test_finetune.py",
    "test_weights.py",
)


def pytest_collection_modifyitems(config, items):
    """Longest modules first (above); tests marked ``gpu`` need CUDA: skipped without it
    (benchmarks/gpu_check.py runs them)."""
    import torch

    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run on a GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def script_env(**extra) -> dict:
    """The environment an entry point runs in under test: this checkout, W&B offline, full
    Hydra errors, no network (plus ``extra``)."""
    return dict(
        os.environ,
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        HYDRA_FULL_ERROR="1",
        CXRLAB_ROOT=str(ROOT),
        **extra,
    )


def shared_data_dir() -> Path:
    """One data folder for every run of the test session (all xdist workers too): the phantom
    and the image cache are built once per setting, under file locks, and reused, as on a
    user's machine. Runs that need data of their own pass ``data.source.root``."""
    base = Path(os.environ["CXRLAB_TEST_BASETEMP"])
    return base / "shared-data"


@pytest.fixture(scope="session", autouse=True)
def _test_basetemp(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # .../pytest-N/popen-gw0: share .../pytest-N
        base = base.parent
    os.environ["CXRLAB_TEST_BASETEMP"] = str(base)
    yield


_WARM = None


def _warm_server():
    """This worker's warm server (tests/warm.py), started on first use."""
    global _WARM
    import warm

    if _WARM is None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        _WARM = warm.WarmServer(Path(os.environ["CXRLAB_TEST_BASETEMP"]) / f"warm-{worker}")
        import atexit

        atexit.register(_WARM.close)
    return _WARM


def start_process(cmd: list, *, env: dict | None = None, cwd=None, start_new_session=False):
    """``subprocess.Popen(cmd)`` with stdout and stderr captured (``communicate()`` returns
    them as text). ``python <script.py> ...`` commands of this interpreter are forked from this
    worker's warm server (tests/warm.py: a real process, its imports already done); anything
    else, or every command with CXRLAB_TEST_COLD=1, starts cold."""
    if (
        len(cmd) > 1
        and cmd[0] == sys.executable
        and str(cmd[1]).endswith(".py")
        and not os.environ.get("CXRLAB_TEST_COLD")
    ):
        return _warm_server().start(cmd, env=env, cwd=cwd, start_new_session=start_new_session)
    return subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=start_new_session,
    )  # fmt: skip


def warm_python(folder: Path) -> Path | None:
    """A folder holding a ``python`` that starts ``python <script>.py`` from this worker's warm
    server (to put first on PATH for commands run through bash as typed); None with
    CXRLAB_TEST_COLD=1."""
    import warm

    if os.environ.get("CXRLAB_TEST_COLD"):
        return None
    return warm.write_shim(_warm_server(), folder)


def run_process(cmd: list, *, env: dict | None = None, cwd=None, timeout: float = 600):
    """``subprocess.run(cmd, capture_output=True, text=True)`` through ``start_process``."""
    proc = start_process(cmd, env=env, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, 9)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_script(script: str, tmp: Path, run_dir: str, overrides, check: bool):
    """Run an entry point as a user does, with its logs and run folder under ``tmp`` and the
    session's shared data folder."""
    cmd = [
        sys.executable,
        str(ROOT / script),
        f"paths.data_dir={shared_data_dir()}",
        f"paths.log_dir={tmp / 'logs'}",
        f"hydra.run.dir={tmp / run_dir}",
        *overrides,
    ]
    proc = run_process(cmd, env=script_env(), timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def run_train(tmp: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """train.py with debug=default on the tests' own small data: all of it (no 120-image
    subset), and for the phantom a 60-patient one (later overrides win)."""
    base = ["debug=default", "data.dataset_size=null"]
    if not any(o.startswith("data=") for o in overrides):
        base.append("data.source.num_patients=60")
    return run_script("train.py", tmp, "run", [*base, *overrides], check)


def run_eval(tmp: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_script("eval.py", tmp, "eval", overrides, check)


# the package function behind each entry point, and its config
ENTRY_POINTS = {
    "train.py": ("train.yaml", "cxrlab.training:train"),
    "eval.py": ("eval.yaml", "cxrlab.evaluation.run:evaluate"),
    "explore.py": ("explore.yaml", "cxrlab.data.explore:explore"),
}


def run_here(script: str, tmp: Path, run_dir: str, overrides, check: bool = True):
    """What ``run_script`` does, in this process (no interpreter start, no imports again):
    the entry point's composed config with its run folder under ``tmp``, then its package
    function, its log lines captured. Returns what ``subprocess.run`` would: ``returncode``
    (0; 2 for a user's mistake, as the entry points exit; 1 otherwise) and the log text as
    ``stderr``. For tests where a subprocess proves nothing more."""
    import importlib
    import logging
    import traceback
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig

    from cxrlab.errors import EXIT_USER_ERROR, UserError

    config_name, target = ENTRY_POINTS[script]
    module, fn = target.split(":")
    cfg = compose(config_name, list(overrides), tmp / run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.data_dir = str(shared_data_dir())
        cfg.paths.log_dir = str(tmp / "logs")
        del cfg.hydra
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Capture(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    code = 0
    try:
        getattr(importlib.import_module(module), fn)(cfg)
    except UserError as e:
        if check:
            raise
        code = EXIT_USER_ERROR
        lines.append(f"Error: {e}")
    except Exception:
        if check:
            raise
        code = 1
        lines.append(traceback.format_exc())
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        HydraConfig.instance().cfg = None
    return SimpleNamespace(returncode=code, stdout="", stderr="\n".join(lines))


def train_here(tmp: Path, *overrides: str, check: bool = True):
    """``run_train`` in this process: the same defaults, the same run folder (``tmp/run``)."""
    base = ["debug=default", "data.dataset_size=null"]
    if not any(o.startswith("data=") for o in overrides):
        base.append("data.source.num_patients=60")
    return run_here("train.py", tmp, "run", [*base, *overrides], check)


def eval_here(tmp: Path, *overrides: str, check: bool = True):
    """``run_eval`` in this process (report in ``tmp/eval``)."""
    return run_here("eval.py", tmp, "eval", overrides, check)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose(config_name: str, overrides: list[str], out: Path | None = None) -> DictConfig:
    """An entry point's composed config (with Hydra's part), its run folder ``out`` if given."""
    from hydra import compose as hydra_compose

    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
    if out is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(out)
            cfg.paths.log_dir = str(out.parent / "logs")
            cfg.hydra.runtime.output_dir = str(out)
    return cfg


def compose_train(overrides: list[str], tmp: Path | None = None) -> DictConfig:
    """The composed train config, with run/data folders under ``tmp`` when given."""
    return compose("train.yaml", overrides, None if tmp is None else tmp / "run")


def train_in_process(overrides: list[str], tmp: Path) -> tuple[dict, dict]:
    """train.py's work without a new interpreter (lightning-hydra-template's ``cfg_train``
    way): the composed config with its run, data and log folders under ``tmp``, then
    ``cxrlab.training.train``. For tests where a subprocess proves nothing more."""
    from hydra.core.hydra_config import HydraConfig

    from cxrlab.training import train

    cfg = compose_train(overrides, tmp)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.data_dir = str(shared_data_dir())
        del cfg.hydra  # as @hydra.main hands it over: the job's config only
    try:
        return train(cfg)
    finally:
        HydraConfig.instance().cfg = None


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """A 40-patient phantom in the Kaggle layout (shared by the whole session)."""
    from cxrlab.data import phantom

    root = tmp_path_factory.mktemp("phantom")
    cfg = phantom.PhantomConfig(num_patients=40, seed=3, width_range=(300, 420), workers=2)
    phantom.generate(root, cfg, progress=False)
    return root


def wandb_records(run: Path) -> dict:
    """An offline W&B run's records by type (each record's own content), as W&B itself reads
    them back: ``wandb leet inspect --json <run folder>``."""
    import json

    wandb_cli = Path(sys.executable).parent / "wandb"
    proc = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run)],
                          capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    out: dict = {}
    for line in proc.stdout.splitlines():
        rec = json.loads(line)
        out.setdefault(rec["type"], []).append(rec[rec["type"]])
    return out
