"""What every benchmark shares: where results go, the machine stamp, running train.py as a
user does, and writing a result (benchmarks/results/<name>.json, kept in the repository:
benchmarks/tables.py makes docs/benchmarks.md's tables from them). Benchmarks run as scripts (``python benchmarks/x.py``), so
this folder is on their import path: ``from common import save``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "logs" / "bench"  # scratch: generated files, caches, runs
RESULTS = ROOT / "benchmarks" / "results"  # the figures, with machine and date


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def train_py(*args: str) -> subprocess.CompletedProcess:
    """Run ``train.py`` with these overrides as a user does (offline W&B, this checkout's paths);
    raises with the end of its stderr when it fails."""
    env = dict(os.environ, WANDB_MODE="offline", CXRLAB_ROOT=str(ROOT))
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"train.py {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc


def save(name: str, result: dict, quiet: tuple[str, ...] = ()) -> None:
    """Write benchmarks/results/<name>.json (with the machine it ran on and the date) and print
    it, less the ``quiet`` keys (long tables already printed as they were measured). Then
    ``python benchmarks/tables.py`` puts the figures into docs/benchmarks.md."""
    import datetime

    RESULTS.mkdir(parents=True, exist_ok=True)
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    result = {"benchmark": name, "machine": machine(), "date": date, **result}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in quiet}, indent=2))
