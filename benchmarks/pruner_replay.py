"""Replay finished, unpruned sweeps through Optuna pruners: what each would have saved and lost.

    python benchmarks/pruner_replay.py STORAGE:STUDY [STORAGE:STUDY ...] [--report last|best]
                                       [--out pruner_replay]

e.g. `sqlite:///logs/optuna/studies.db:train-template-optuna`. Every study named must have been
run without a pruner (`hydra.sweeper.pruner=null`), so each trial's whole validation curve is
stored. The replay feeds those curves, trial by trial in their original order, to each pruner
below (a fresh in-memory study per pruner and source study; as in a sweep, the pruner is not
asked after the last epoch) and records which trials it would have stopped and after how many
epochs. `--report best` feeds each curve's best value so far instead of each epoch's (what
`hydra.sweeper.report=best`, the default, tells the pruner). Reported per pruner: the epochs it
would have trained (against all of them), whether it would have kept each study's best trial,
how many trials it stops that would have become the best so far (with TPE these change every
later proposal: the sampler builds on its best trials), and the best value among the trials it
lets finish (minus the study's best).

What a replay cannot show: in a real pruned sweep the sampler learns from truncated curves and
proposes other parameters after the first pruned trial (docs/sweeps.md measures that with
benchmarks/sweep_pruning.py). The replay isolates the pruner's own decisions on the same curves,
so pruners can be compared on a user's own sweep in seconds instead of hours.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    PatientPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
)
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
from common import save  # noqa: E402

PRUNERS: dict[str, Callable[[], BasePruner]] = {
    "median(startup 3, warmup 2)": lambda: MedianPruner(3, 2),
    "median(startup 3, warmup 1)": lambda: MedianPruner(3, 1),
    "percentile: keep top 25% (startup 3, warmup 1)": lambda: PercentilePruner(25.0, 3, 1),
    "successive halving (min 1, rf 3)": lambda: SuccessiveHalvingPruner(1, 3),
    "successive halving (min 2, rf 2)": lambda: SuccessiveHalvingPruner(2, 2),
    "successive halving (min 2, rf 3)": lambda: SuccessiveHalvingPruner(2, 3),
    # the default (configs/hparams_search/optuna.yaml), there with --report best
    "successive halving (min 3, rf 2)": lambda: SuccessiveHalvingPruner(3, 2),
    "median(startup 5, warmup 2)": lambda: MedianPruner(5, 2),
    "hyperband (min 1, rf 3)": lambda: HyperbandPruner(min_resource=1, reduction_factor=3),
    # the median rule, asked only once a trial has not improved its best for `patience` epochs:
    # a slow but still climbing trial is let through (noisy small validation splits)
    "median(startup 3, warmup 2), patience 2": lambda: PatientPruner(MedianPruner(3, 2), 2),
    "median(startup 3, warmup 2), patience 3": lambda: PatientPruner(MedianPruner(3, 2), 3),
}


def curves(storage: str, name: str) -> tuple[str, list[list[float]], list[float]]:
    """The study's direction, its trials' validation curves (epoch order) and final values."""
    study = optuna.load_study(study_name=name, storage=storage)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if any(t.state == TrialState.PRUNED for t in study.trials):
        raise SystemExit(f"{name}: has pruned trials; replay needs a sweep run without a pruner")
    if not done:
        raise SystemExit(f"{name}: no complete trial in {storage}")
    direction = "maximize" if study.direction.name == "MAXIMIZE" else "minimize"
    return (
        direction,
        [[t.intermediate_values[k] for k in sorted(t.intermediate_values)] for t in done],
        [t.value for t in done],
    )


def best_so_far(curve: list[float], direction: str) -> list[float]:
    pick = max if direction == "maximize" else min
    return [pick(curve[: i + 1]) for i in range(len(curve))]


def replay(pruner: BasePruner, direction: str, cs: list[list[float]], values: list[float]):
    """Feeds the curves to ``pruner``: the epochs it trains, the trials it lets finish, and the
    trials it stops that would have become the best so far (the sampler's anchor: TPE proposes
    around the best trials, so stopping one of these changes every later proposal)."""
    # a fixed name: HyperbandPruner assigns trials to brackets by a hash of it
    study = optuna.create_study(study_name="replay", direction=direction, pruner=pruner)
    better = (lambda a, b: a > b) if direction == "maximize" else (lambda a, b: a < b)
    epochs, finished, stopped_leaders = 0, [], []
    # as in cxrlab.sweep.trial: the pruner is not asked after a trial's last epoch (max_epochs,
    # taken as the longest curve; shorter ones ended by EarlyStopping)
    last = max(len(c) for c in cs) - 1
    for i, curve in enumerate(cs):
        trial = study.ask()
        pruned = False
        for step, value in enumerate(curve):
            epochs += 1
            trial.report(value, step)
            if step < last and trial.should_prune():
                pruned = True
                break
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            if not finished or all(better(values[i], values[j]) for j in finished):
                stopped_leaders.append(i)
        else:
            study.tell(trial, values[i])
            finished.append(i)
    return epochs, finished, stopped_leaders


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", help="STORAGE:STUDY of an unpruned sweep")
    p.add_argument(
        "--report",
        choices=["last", "best"],
        default="last",
        help="what the pruner sees each epoch: that epoch's value or the best so far",
    )
    p.add_argument("--out", default="pruner_replay", help="benchmarks/results/<out>.json")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sources = []
    for ref in args.studies:
        storage, _, name = ref.rpartition(":")
        if not storage:
            raise SystemExit(f"{ref}: expected STORAGE:STUDY, e.g. sqlite:///studies.db:my-study")
        direction, cs, values = curves(storage, name)
        if args.report == "best":
            cs = [best_so_far(c, direction) for c in cs]
        sources.append((ref, direction, cs, values))
    total = sum(sum(len(c) for c in cs) for _, _, cs, _ in sources)
    rows = {}
    for label, make in PRUNERS.items():
        per_study = []
        for ref, direction, cs, values in sources:
            epochs, finished, leaders = replay(make(), direction, cs, values)
            pick = max if direction == "maximize" else min
            best = values.index(pick(values))
            kept = pick((values[i] for i in finished), default=float("nan"))  # none finished
            per_study.append(
                {
                    "study": ref,
                    "epochs": epochs,
                    "of_epochs": sum(len(c) for c in cs),
                    "finished": len(finished),
                    "kept_best_trial": best in finished,
                    "stopped_would_be_leaders": leaders,
                    "best_value_delta": round(kept - values[best], 4),
                }
            )
        epochs = sum(s["epochs"] for s in per_study)
        rows[label] = {
            "epochs_ratio": round(epochs / total, 3),
            "kept_best_trial": sum(s["kept_best_trial"] for s in per_study),
            "stopped_would_be_leaders": sum(len(s["stopped_would_be_leaders"]) for s in per_study),
            "studies": per_study,
        }
        deltas = " ".join(f"{s['best_value_delta']:+.3f}" for s in per_study)
        print(
            f"{label:40s} epochs {epochs / total:5.0%}  kept best "
            f"{rows[label]['kept_best_trial']}/{len(sources)}  stopped would-be leaders "
            f"{rows[label]['stopped_would_be_leaders']}  best delta {deltas}"
        )
    save(
        args.out,
        {
            "studies": [s[0] for s in sources],
            "report": args.report,
            "total_epochs": total,
            "pruners": rows,
        },
    )


if __name__ == "__main__":
    main()
