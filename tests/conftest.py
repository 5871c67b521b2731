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
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
os.environ.setdefault("CXRLAB_ROOT", str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# no test reaches the internet: pretrained weights are served from loopback (test_weights.py)
os.environ.setdefault("CXRLAB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped without it (benchmarks/gpu_check.py runs them)."""
    import torch

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


def run_script(script: str, tmp: Path, run_dir: str, overrides, check: bool):
    """Run an entry point as a user does, with its data, logs and run folder under ``tmp``."""
    cmd = [
        sys.executable,
        str(ROOT / script),
        f"paths.data_dir={tmp / 'data'}",
        f"paths.log_dir={tmp / 'logs'}",
        f"hydra.run.dir={tmp / run_dir}",
        *overrides,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=script_env(), timeout=600)
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_train(overrides: list[str], tmp: Path | None = None) -> DictConfig:
    """The composed train config, with run/data folders under ``tmp`` when given."""
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("train.yaml", overrides=overrides, return_hydra_config=True)
    if tmp is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp / "run")
            cfg.paths.log_dir = str(tmp / "logs")
            cfg.hydra.runtime.output_dir = str(tmp / "run")
    return cfg


def train_in_process(overrides: list[str], tmp: Path) -> tuple[dict, dict]:
    """train.py's work without a new interpreter (lightning-hydra-template's ``cfg_train``
    way): the composed config with its run, data and log folders under ``tmp``, then
    ``cxrlab.training.train``. For tests where a subprocess proves nothing more."""
    from hydra.core.hydra_config import HydraConfig

    from cxrlab.training import train

    cfg = compose_train(overrides, tmp)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.data_dir = str(tmp / "data")
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
