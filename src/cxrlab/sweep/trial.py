"""The training run's side of a sweep: find its Optuna trial, report every epoch, stop if pruned.

The sweeper hands each run ``optuna_trial={id, number, study}`` as an override. A run in the
sweeper's process (Hydra's basic launcher) finds the live trial in ``ACTIVE``; a run elsewhere
(SLURM through hydra-submitit-launcher) opens the study from the storage named in
``hydra.sweeper``. Either way the pruner is the study's, so every worker prunes alike.
"""

from __future__ import annotations

import logging
import math

import pytorch_lightning as pl

log = logging.getLogger(__name__)

# trial id -> optuna.trial.Trial, filled by the sweeper for runs in its own process
ACTIVE: dict = {}


def resolve_trial(ref):
    """The ``optuna.trial.Trial`` that ``ref`` (the ``optuna_trial`` config) names."""
    import optuna

    trial_id = int(ref["id"])
    if trial_id in ACTIVE:
        return ACTIVE[trial_id]
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    if not HydraConfig.initialized():
        raise RuntimeError(
            f"optuna_trial={dict(ref)} is set, but this run is neither in the sweeper's process "
            "nor started by Hydra: optuna_trial is for the sweeper to set, not for users"
        )
    sweeper = HydraConfig.get().sweeper
    storage = sweeper.get("storage")
    if not storage:
        raise RuntimeError(
            "This trial runs outside the sweeper's process, so the study needs a database "
            "storage (hydra.sweeper.storage), not an in-memory one"
        )
    from cxrlab.sweep.study import open_storage

    pruner = instantiate(sweeper.pruner) if sweeper.get("pruner") else None
    study = optuna.load_study(
        study_name=str(ref["study"]),
        storage=open_storage(str(storage), heartbeat_interval=None),
        pruner=pruner or optuna.pruners.NopPruner(),
        sampler=optuna.samplers.RandomSampler(),
    )
    return optuna.trial.Trial(study, trial_id)


REPORTS = ("last", "best")
# epochs per fold in the step numbers of a cross-validated trial without an epoch limit
UNLIMITED_EPOCHS = 10_000


def skip_if_pruned(ref) -> None:
    """A cross-validated trial's fold run: raise ``optuna.TrialPruned`` before any work when an
    earlier fold of the trial was pruned (the sweeper launches every fold; this one has
    nothing left to decide). Spawned DDP ranks (LOCAL_RANK > 0) never get here first."""
    import os

    import optuna

    if ref.get("fold") is None or int(ref["fold"]) == 0 or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    pruned = resolve_trial(ref).user_attrs.get("pruned_in_fold")
    if pruned is not None and int(pruned) < int(ref["fold"]):
        raise optuna.TrialPruned(
            f"not trained: fold {pruned} of trial {ref['number']} was pruned, so the trial is"
        )


def report_mode() -> str:
    """``hydra.sweeper.report`` of the sweep this run belongs to (default "best")."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "best"
    return str(HydraConfig.get().sweeper.get("report") or "best")


class OptunaTrialReporter(pl.Callback):
    """Reports the monitored validation metric to the trial after each epoch; prunes (never
    after the last epoch: stopping then saves nothing and would discard a finished trial).

    ``report="best"`` (the default) reports the best value so far, which is what the trial
    returns if it stops now (its best checkpoint's value): a trial is judged by its best epoch,
    not by a dip of a noisy validation split. ``"last"`` reports each epoch's value.

    In a cross-validated trial (``ref`` has ``fold`` and ``folds``), fold ``i`` reports at
    steps ``i * max_epochs + epoch``: the pruner compares trials on the same fold at the same
    epoch, and a pruned fold ends the trial (the later folds do not train). Only the last
    fold's last epoch is never pruned. Multi-objective studies are not pruned (Optuna cannot
    prune them), so nothing is reported.

    Rank 0 talks to the study; the decision is broadcast so every DDP rank stops together.
    A pruned run stops like an early-stopped one (checkpoints kept); ``train()`` then raises
    ``optuna.TrialPruned`` so the sweeper records the trial as pruned.
    """

    def __init__(self, ref, monitor: str, report: str = "best"):
        if report not in REPORTS:
            raise ValueError(f"hydra.sweeper.report={report!r}: use one of {list(REPORTS)}")
        self.ref = ref
        self.monitor = monitor
        self.report = report
        self.best: float | None = None
        self.trial = None
        self.pruned_at: int | None = None
        self.last_value: float | None = None
        self.fold = None if ref.get("fold") is None else int(ref["fold"])
        self.folds = None if ref.get("folds") is None else int(ref["folds"])
        self.multi_objective = False

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero and self.trial is None:
            self.trial = resolve_trial(self.ref)
            self.multi_objective = len(self.trial.study.directions) > 1
            if self.multi_objective:
                log.info(
                    "Optuna trial %s of a multi-objective study: not reported per epoch, not "
                    "pruned (Optuna prunes single-objective studies only)",
                    self.ref["number"],
                )
                return
            log.info(
                "Optuna trial %s: %s reported after every epoch (%s)",
                self.ref["number"],
                self.monitor,
                "the best so far" if self.report == "best" else "that epoch's value",
            )

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        prune = False
        if trainer.is_global_zero and not self.multi_objective:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None and math.isfinite(float(value)):
                self.last_value = float(value)
                self.best = self._better(self.best, self.last_value)
                reported = self.best if self.report == "best" else self.last_value
                end = trainer.max_epochs  # None or -1: no epoch limit
                limited = end is not None and end > 0
                offset = (self.fold or 0) * (end if limited else UNLIMITED_EPOCHS)
                self.trial.report(reported, step=offset + trainer.current_epoch)
                # after the last epoch there is nothing left to save: the trial completes (and
                # is tested, and counts as a finished trial for the sampler) whatever the pruner
                # would say; Optuna's own Lightning callback prunes it here. A cross-validated
                # trial still saves its later folds, so only the last fold's end is exempt
                last = limited and trainer.current_epoch + 1 >= end
                if self.folds is not None and self.fold is not None:
                    last = last and self.fold + 1 >= self.folds
                prune = not last and bool(self.trial.should_prune())
                if prune and self.fold is not None:
                    self.trial.set_user_attr("pruned_in_fold", self.fold)
        prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True
            log.info(
                "Trial %s pruned after epoch %d (%s=%s): stopping",
                self.ref["number"],
                self.pruned_at,
                self.monitor,
                self.last_value,
            )

    def _better(self, a: float | None, b: float) -> float:
        import optuna

        if a is None:
            return b
        maximize = self.trial.study.direction == optuna.study.StudyDirection.MAXIMIZE
        return max(a, b) if maximize else min(a, b)

    def pruned_message(self) -> str:
        where = f"fold {self.fold}, " if self.fold is not None else ""
        return (
            f"pruned by the study's pruner after {where}epoch {self.pruned_at} "
            f"({self.monitor}={self.last_value})"
        )
