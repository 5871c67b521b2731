"""What the trackers' charts, tables and images cost a training run: tracking on (the defaults)
against off, side by side, logger=wandb (offline) both.

    python benchmarks/tracking.py [--rounds 3] [--epochs 3] [--size 128] [--patients 300]

Each round runs train.py twice, alternating which side goes first: (a) the defaults
(`tracking.epoch_charts=true`, 200-row prediction tables of val and test with their images, 8+8
worst errors with Grad-CAM per split), (b) `tracking.epoch_charts=false tracking.table_rows=0
tracking.worst=0`. Same data, model, seed and epochs (ResNet18, the phantom). Reports the
median wall time of the whole command and of its training+testing part (from train.log's
timestamps: "Training" to the end), their ratios, and the size of the offline W&B run folder
plus what W&B staged for upload. Writes benchmarks/results/tracking.json.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import time
from datetime import datetime
from pathlib import Path

from common import BENCH, save, train_py

SIDES = {
    "on": [],
    "off": ["tracking.epoch_charts=false", "tracking.table_rows=0", "tracking.worst=0"],
}
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _train_and_test_seconds(log: Path) -> float:
    """From the "Training" line to the log's last line."""
    lines = log.read_text().splitlines()
    stamps = [(STAMP.match(ln), ln) for ln in lines]
    stamps = [(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), ln) for m, ln in stamps if m]
    start = next(t for t, ln in stamps if ln.rstrip().endswith("- Training"))
    return (stamps[-1][0] - start).total_seconds()


def run(side: str, args, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    staging = Path.home() / ".local" / "share" / "wandb" / "artifacts" / "staging"
    before = _size(staging) if staging.is_dir() else 0
    t0 = time.perf_counter()
    train_py(
        "logger=wandb", "model=resnet18", "model.pretrained=false",
        f"data.source.num_patients={args.patients}", "data.dataset_size=null",
        f"data.preprocess.size={args.size}", "data.num_workers=2",
        f"trainer.max_epochs={args.epochs}", "trainer.accelerator=cpu",
        "evaluation.bootstrap=200", f"paths.log_dir={BENCH / 'tracking' / 'logs'}",
        f"hydra.run.dir={out}", *SIDES[side],
    )  # fmt: skip
    wall = time.perf_counter() - t0
    after = _size(staging) if staging.is_dir() else 0
    return {
        "wall_s": wall,
        "train_test_s": _train_and_test_seconds(out / "train.log"),
        "wandb_run_mb": _size(out / "wandb") / 2**20,
        "staged_mb": max(0, after - before) / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--patients", type=int, default=300)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {s: [] for s in SIDES}
    for i in range(args.rounds):
        order = list(SIDES) if i % 2 == 0 else list(SIDES)[::-1]
        for side in order:
            r = run(side, args, BENCH / "tracking" / side)
            runs[side].append(r)
            print(f"round {i} {side}: {r}", flush=True)
    median = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in runs.items()}
    save(
        "tracking",
        {
            "setup": f"ResNet18, {args.size} px, phantom of {args.patients} patients, "
            f"{args.epochs} epochs, logger=wandb offline, CPU",
            "rounds": args.rounds,
            "runs": runs,
            "median": median,
            "ratio_on_over_off": {
                k: median["on"][k] / median["off"][k] for k in ("wall_s", "train_test_s")
            },
        },
        quiet=("runs",),
    )


if __name__ == "__main__":
    main()
