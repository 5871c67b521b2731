"""Pruning benchmark: the same Optuna sweep on the phantom with and without a pruner.

    python benchmarks/sweep_pruning.py [--trials 12] [--epochs 8]

Both arms run `python train.py -m hparams_search=optuna ...` one after the other on this
machine, with the same seed (so the random start-up trials are the same), the same search
space and their own study; one with `hydra.sweeper.pruner=null`. Reported: wall time of each
sweep, best validation AUROC, trials pruned, and the ratios. Writes logs/bench/sweep_pruning.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import BENCH, machine, train_py  # noqa: E402

# small enough for a 2-core CPU; wide learning-rate range, as real first sweeps are
SETTINGS = [
    "hparams_search=optuna",
    "hydra.sweeper.params=null",
    "model.optimizer.lr=tag(log,interval(1e-5,3e-1))",
    "model.dropout=interval(0.0,0.5)",
    "model.optimizer.weight_decay=tag(log,interval(1e-6,1e-2))",
    "model.loss.name=choice(ce,weighted_ce,focal)",
    "model=resnet18",
    "data.preprocess.size=64",
    "data.dataset_size=480",
    "data.source.num_patients=400",
    "evaluation.bootstrap=200",
    "logger=csv",
    "callbacks.progress_bar=null",
    "hydra.sweeper.plots=false",
]


def sweep(out: Path, name: str, trials: int, epochs: int, prune: bool) -> dict:
    args = [
        "-m",
        *SETTINGS,
        f"paths.log_dir={out}",
        f"paths.data_dir={BENCH / 'sweep-data'}",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.n_trials={trials}",
        f"trainer.max_epochs={epochs}",
    ]
    if not prune:
        args.append("hydra.sweeper.pruner=null")
    t0 = time.perf_counter()
    train_py(*args)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna' / 'studies.db'}")
    states = [t.state for t in study.trials]
    return {
        "wall_s": round(wall, 1),
        "best_val_auroc": round(study.best_value, 4),
        "best_trial": study.best_trial.number,
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
        "epochs_trained": sum(len(t.intermediate_values) for t in study.trials),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = BENCH / f"sweep-{stamp}"
    # build the phantom and the cache once, outside the timed sweeps
    sweep(out / "warmup", "warmup", 1, 1, prune=False)
    base = sweep(out / "no_pruning", "no-pruning", args.trials, args.epochs, prune=False)
    pruned = sweep(out / "median_pruner", "median-pruner", args.trials, args.epochs, prune=True)
    result = {
        "settings": SETTINGS + [f"n_trials={args.trials}", f"max_epochs={args.epochs}"],
        "no_pruning": base,
        "median_pruner": pruned,
        "time_ratio": round(pruned["wall_s"] / base["wall_s"], 3),
        "time_saved_pct": round(100 * (1 - pruned["wall_s"] / base["wall_s"]), 1),
        "best_value_delta": round(pruned["best_val_auroc"] - base["best_val_auroc"], 4),
    }
    BENCH.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "sweep_pruning", "machine": machine(), **result}
    (BENCH / "sweep_pruning.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
