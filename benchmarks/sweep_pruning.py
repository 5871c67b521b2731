"""Pruning benchmark: the same Optuna sweep on the phantom with and without a pruner.

    python benchmarks/sweep_pruning.py [--trials 12] [--epochs 8] [--arms none median sha]

Every arm runs `python train.py -m hparams_search=optuna ...` one after the other on this
machine, with the same seed (so the random start-up trials are the same), the same search
space and its own study: `none` with `hydra.sweeper.pruner=null` (the baseline), `median` with
the default MedianPruner, `sha` with a SuccessiveHalvingPruner (rungs at 1, 3, 9 epochs,
keeping the best third). Reported: wall time of each sweep, best validation AUROC, trials
pruned, epochs trained, and each pruner's ratios to the baseline. Writes
logs/bench/sweep_pruning.json.
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


PRUNERS = {
    "none": ["hydra.sweeper.pruner=null"],
    "median": [],  # the default in configs/hparams_search/optuna.yaml
    "sha": [
        "hydra.sweeper.pruner=null",
        "hydra.sweeper.pruner={_target_:optuna.pruners.SuccessiveHalvingPruner,"
        "min_resource:1,reduction_factor:3}",
    ],
}


def sweep(out: Path, name: str, trials: int, epochs: int, pruner: str) -> dict:
    args = [
        "-m",
        *SETTINGS,
        f"paths.log_dir={out}",
        f"paths.data_dir={BENCH / 'sweep-data'}",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.n_trials={trials}",
        f"trainer.max_epochs={epochs}",
    ]
    args += PRUNERS[pruner]
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
    p.add_argument("--arms", nargs="+", default=["none", "median", "sha"], choices=list(PRUNERS))
    args = p.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = BENCH / f"sweep-{stamp}"
    # build the phantom and the cache once, outside the timed sweeps
    sweep(out / "warmup", "warmup", 1, 1, pruner="none")
    arms = {}
    for arm in args.arms:
        arms[arm] = sweep(out / arm, f"pruner-{arm}", args.trials, args.epochs, arm)
        print(arm, arms[arm], flush=True)
    result = {
        "settings": SETTINGS + [f"n_trials={args.trials}", f"max_epochs={args.epochs}"],
        "arms": arms,
    }
    if "none" in arms:
        base = arms["none"]
        result["against_no_pruning"] = {
            arm: {
                "time_ratio": round(r["wall_s"] / base["wall_s"], 3),
                "time_saved_pct": round(100 * (1 - r["wall_s"] / base["wall_s"]), 1),
                "epochs_ratio": round(r["epochs_trained"] / base["epochs_trained"], 3),
                "best_value_delta": round(r["best_val_auroc"] - base["best_val_auroc"], 4),
            }
            for arm, r in arms.items()
            if arm != "none"
        }
    BENCH.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "sweep_pruning", "machine": machine(), **result}
    (BENCH / "sweep_pruning.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
