"""Pruning benchmark: the same Optuna sweep on the phantom with and without a pruner.

    python benchmarks/sweep_pruning.py [--trials 12] [--epochs 8] [--arms none median sha]
                                       [--seeds 42 1 2] [--dataset-size 480]
                                       [--ratios 0.6 0.2 0.2] [--out sweep_pruning]

Every arm runs `python train.py -m hparams_search=optuna ...` one after the other on this
machine, with the same seed (so the random start-up trials and the data split are the same),
the same search space and its own study: `none` with `hydra.sweeper.pruner=null` (the
baseline), `median` with MedianPruner(n_startup_trials=3, n_warmup_steps=2), `sha` with a
SuccessiveHalvingPruner (rungs at steps 1, 3, 9, keeping the best third), `sha2` a gentler one
(rungs at steps 2, 4, 8, keeping the better half), `sha3best` rungs at steps 3, 6, 12 (after
the 4th, 7th and 13th epoch) keeping the better half of the trials ranked by their best epoch
so far (`hydra.sweeper.report=best`); every arm sets its pruner and report explicitly. With several seeds the
arms alternate seed by seed (so a slow minute of the machine does not land on one arm only)
and each seed is a paired comparison. Reported per sweep: wall time, best validation AUROC (the value the study
maximizes), the test AUROC of that best trial's model (what a user ships: one number not
inflated by taking a maximum over noisy validation values), trials pruned, epochs trained;
per arm the means over seeds and, against the baseline, the mean ratios and paired
differences. `--dataset-size` and `--ratios` set the phantom subset and its train/validation/
test split (the validation split is what the pruner and the study rank trials by). Writes
benchmarks/results/<--out>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
from common import BENCH, save, train_py  # noqa: E402

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
    "evaluation.bootstrap=200",
    "logger=csv",
    "callbacks.progress_bar=null",
    "hydra.sweeper.plots=false",
]


# every arm names its pruner and what it is told each epoch (hydra.sweeper.report), so the
# arms mean the same whatever the shipped defaults are; "none" keeps each epoch's raw value, the
# curves pruner_replay.py replays
PRUNERS = {
    "none": ["hydra.sweeper.pruner=null", "hydra.sweeper.report=last"],
    "median": [
        "hydra.sweeper.pruner=null",
        "hydra.sweeper.pruner={_target_:optuna.pruners.MedianPruner,"
        "n_startup_trials:3,n_warmup_steps:2}",
        "hydra.sweeper.report=last",
    ],
    "sha": [
        "hydra.sweeper.pruner=null",
        "hydra.sweeper.pruner={_target_:optuna.pruners.SuccessiveHalvingPruner,"
        "min_resource:1,reduction_factor:3}",
        "hydra.sweeper.report=last",
    ],
    # gentler: first rung after 2 epochs, rungs at 2, 4, 8 keep the better half
    "sha2": [
        "hydra.sweeper.pruner=null",
        "hydra.sweeper.pruner={_target_:optuna.pruners.SuccessiveHalvingPruner,"
        "min_resource:2,reduction_factor:2}",
        "hydra.sweeper.report=last",
    ],
    # rungs at 3, 6, 12 epochs keep the better half, judged by each trial's best epoch so far
    # (hydra.sweeper.report=best: what the trial returns if it stops now)
    "sha3best": [
        "hydra.sweeper.pruner=null",
        "hydra.sweeper.pruner={_target_:optuna.pruners.SuccessiveHalvingPruner,"
        "min_resource:3,reduction_factor:2}",
        "hydra.sweeper.report=best",
    ],
}


def data_settings(size: int, ratios: list[float]) -> list[str]:
    """The phantom's size (balanced subset; ~2 images per patient) and its split ratios."""
    train, val, test = ratios
    return [
        f"data.dataset_size={size}",
        f"data.source.num_patients={size * 5 // 6}",
        f"data.split.ratios={{train:{train},val:{val},test:{test}}}",
    ]


def sweep(
    out: Path, name: str, trials: int, epochs: int, pruner: str, seed: int, data: list[str]
) -> dict:
    args = [
        "-m",
        *SETTINGS,
        *data,
        f"paths.log_dir={out}",
        f"paths.data_dir={BENCH / 'sweep-data'}",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.n_trials={trials}",
        f"trainer.max_epochs={epochs}",
        f"seed={seed}",
    ]
    args += PRUNERS[pruner]
    t0 = time.perf_counter()
    train_py(*args)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna' / 'studies.db'}")
    states = [t.state for t in study.trials]
    best = study.best_trial.number
    report = out / "optuna" / name / f"trial_{best}" / "report" / "metrics.json"
    test = json.loads(report.read_text())["metrics"]["auroc"]
    return {
        "seed": seed,
        "wall_s": round(wall, 1),
        "best_val_auroc": round(study.best_value, 4),
        "best_trial": best,
        "best_trial_test_auroc": round(test["value"] if isinstance(test, dict) else test, 4),
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
        "epochs_trained": sum(len(t.intermediate_values) for t in study.trials),
    }


def mean(values: list[float]) -> float:
    return round(statistics.fmean(values), 4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--arms", nargs="+", default=["none", "median", "sha"], choices=list(PRUNERS))
    p.add_argument("--seeds", nargs="+", type=int, default=[42])
    p.add_argument("--dataset-size", type=int, default=480, help="balanced phantom images")
    p.add_argument(
        "--ratios", nargs=3, type=float, default=[0.6, 0.2, 0.2], metavar=("TRAIN", "VAL", "TEST")
    )
    p.add_argument("--out", default="sweep_pruning", help="benchmarks/results/<out>.json")
    args = p.parse_args()
    data = data_settings(args.dataset_size, args.ratios)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = BENCH / f"sweep-{stamp}"
    # build the phantom and the cache once, outside the timed sweeps
    sweep(out / "warmup", "warmup", 1, 1, pruner="none", seed=args.seeds[0], data=data)
    runs: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            r = sweep(
                out / f"{arm}-{seed}",
                f"pruner-{arm}-{seed}",
                args.trials,
                args.epochs,
                arm,
                seed,
                data,
            )
            runs[arm].append(r)
            print(arm, r, flush=True)
    arms = {
        arm: {
            "mean_wall_s": mean([r["wall_s"] for r in rs]),
            "mean_best_val_auroc": mean([r["best_val_auroc"] for r in rs]),
            "mean_best_trial_test_auroc": mean([r["best_trial_test_auroc"] for r in rs]),
            "mean_epochs_trained": mean([r["epochs_trained"] for r in rs]),
            "sweeps": rs,
        }
        for arm, rs in runs.items()
    }
    result = {
        "settings": SETTINGS
        + data
        + [f"n_trials={args.trials}", f"max_epochs={args.epochs}", f"seeds={args.seeds}"],
        "arms": arms,
    }
    if "none" in runs:
        base = runs["none"]

        def paired(rs: list[dict], key: str) -> list[float]:
            return [round(r[key] - b[key], 4) for r, b in zip(rs, base)]

        result["against_no_pruning"] = {
            arm: {
                "time_ratio": mean([r["wall_s"] / b["wall_s"] for r, b in zip(rs, base)]),
                "time_saved_pct": round(
                    100 * (1 - sum(r["wall_s"] for r in rs) / sum(b["wall_s"] for b in base)), 1
                ),
                "epochs_ratio": mean(
                    [r["epochs_trained"] / b["epochs_trained"] for r, b in zip(rs, base)]
                ),
                "best_val_delta_per_seed": paired(rs, "best_val_auroc"),
                "best_val_delta_mean": mean(paired(rs, "best_val_auroc")),
                "test_delta_per_seed": paired(rs, "best_trial_test_auroc"),
                "test_delta_mean": mean(paired(rs, "best_trial_test_auroc")),
            }
            for arm, rs in runs.items()
            if arm != "none"
        }
    save(args.out, result)


if __name__ == "__main__":
    main()
