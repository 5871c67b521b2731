from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """A 40-patient phantom in the Kaggle layout (shared by the whole session)."""
    from cxrlab.data import phantom

    root = tmp_path_factory.mktemp("phantom")
    cfg = phantom.PhantomConfig(num_patients=40, seed=3, width_range=(300, 420), workers=2)
    phantom.generate(root, cfg, progress=False)
    return root
