"""The training run's side of a sweep (cxrlab.sweep.trial) with a real Lightning Trainer."""

import optuna
import pytest
import pytorch_lightning as pl
import torch

from cxrlab.sweep.trial import ACTIVE, OptunaTrialReporter, skip_if_pruned


class Constant(pl.LightningModule):
    """One weight, four batches; logs val/auroc = 0.5 every epoch."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, _):
        return (self.w - batch[0]).pow(2).mean()

    def validation_step(self, batch, _):
        self.log("val/auroc", 0.5)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)))

    def val_dataloader(self):
        return self.train_dataloader()


class Dipping(Constant):
    """val/auroc 0.6, 0.4, 0.5 in epochs 0, 1, 2: a noisy dip after a good first epoch."""

    def validation_step(self, batch, _):
        self.log("val/auroc", (0.6, 0.4, 0.5)[self.current_epoch])


def fit(module, reporter, max_epochs):
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        max_steps=40,  # 10 epochs of 4 batches
        callbacks=[reporter],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module)
    return trainer


# -1: no epoch limit (Lightning's), so no epoch is the last one; max_steps guards the test
@pytest.mark.parametrize(("max_epochs", "pruned_at"), [(3, 1), (2, None), (-1, 1)])
def test_reporter_prunes_but_never_after_the_last_epoch(max_epochs, pruned_at):
    # a pruner that stops every trial from the second epoch (step 1) on: 0.5 < 1.01
    pruner = optuna.pruners.ThresholdPruner(lower=1.01, n_warmup_steps=1)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    trial = study.ask()
    ACTIVE[trial._trial_id] = trial
    try:
        reporter = OptunaTrialReporter(
            {"id": trial._trial_id, "number": 0, "study": "s"}, "val/auroc"
        )
        trainer = fit(Constant(), reporter, max_epochs)
    finally:
        ACTIVE.pop(trial._trial_id)
    assert reporter.pruned_at == pruned_at
    # every case ran two epochs and reported both: of 3 (and with no limit) the pruner stopped it
    # after the second; of 2 the second was the last, so it was not asked and the run finished
    assert sorted(study.trials[0].intermediate_values) == [0, 1]
    assert trainer.current_epoch == 2


@pytest.mark.parametrize(
    ("report", "direction", "expected"),
    [
        ("last", "maximize", [0.6, 0.4, 0.5]),
        ("best", "maximize", [0.6, 0.6, 0.6]),  # what the trial would return if stopped now
        ("best", "minimize", [0.6, 0.4, 0.4]),  # a loss-like metric: the lowest so far
    ],
)
def test_reporter_reports_each_epoch_or_the_best_so_far(report, direction, expected):
    study = optuna.create_study(direction=direction)  # no pruner: every epoch is reported
    trial = study.ask()
    ACTIVE[trial._trial_id] = trial
    try:
        ref = {"id": trial._trial_id, "number": 0, "study": "s"}
        fit(Dipping(), OptunaTrialReporter(ref, "val/auroc", report), max_epochs=3)
    finally:
        ACTIVE.pop(trial._trial_id)
    values = study.trials[0].intermediate_values
    assert [values[k] for k in sorted(values)] == pytest.approx(expected)


def test_reporter_rejects_an_unknown_report():
    with pytest.raises(ValueError, match="hydra.sweeper.report='mean'"):
        OptunaTrialReporter({"id": 0, "number": 0, "study": "s"}, "val/auroc", "mean")


def _fold_reporter(study, fold: int, max_epochs: int, folds: int = 3):
    trial = study.ask()
    ACTIVE[trial._trial_id] = trial
    ref = {"id": trial._trial_id, "number": trial.number, "study": "s", "fold": fold,
           "folds": folds}  # fmt: skip
    try:
        reporter = OptunaTrialReporter(ref, "val/auroc")
        fit(Constant(), reporter, max_epochs)
    finally:
        ACTIVE.pop(trial._trial_id)
    return reporter, trial


def test_a_cross_validated_trial_reports_each_fold_at_its_own_steps_and_stops_when_pruned():
    """Fold i reports at i * max_epochs + epoch; a fold may be pruned at its last epoch (the
    later folds are still to save) and the next fold then does not train."""
    pruner = optuna.pruners.ThresholdPruner(lower=1.01, n_warmup_steps=3)  # steps >= 3
    study = optuna.create_study(direction="maximize", pruner=pruner)
    fold1, trial = _fold_reporter(study, 1, max_epochs=2)  # steps 2, 3
    assert sorted(study.trials[0].intermediate_values) == [2, 3]
    assert fold1.pruned_at == 1 and "fold 1, epoch 1" in fold1.pruned_message()
    ref = {"id": trial._trial_id, "number": trial.number, "study": "s", "folds": 3}
    ACTIVE[trial._trial_id] = trial
    try:
        skip_if_pruned({**ref, "fold": 1})  # fold 1 itself was allowed to start
        with pytest.raises(optuna.TrialPruned, match="fold 1 of trial 0 was pruned"):
            skip_if_pruned({**ref, "fold": 2})
    finally:
        ACTIVE.pop(trial._trial_id)


@pytest.mark.parametrize(("fold", "pruned_at"), [(0, 0), (2, None)])
def test_only_the_last_folds_last_epoch_is_never_pruned(fold, pruned_at):
    pruner = optuna.pruners.ThresholdPruner(lower=1.01)  # prunes whatever is reported
    study = optuna.create_study(direction="maximize", pruner=pruner)
    reporter, _ = _fold_reporter(study, fold, max_epochs=1)
    assert reporter.pruned_at == pruned_at
    assert list(study.trials[0].intermediate_values) == [fold]  # step fold * 1 + 0


def test_a_multi_objective_trial_is_neither_reported_nor_pruned():
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    ACTIVE[trial._trial_id] = trial
    try:
        reporter = OptunaTrialReporter({"id": trial._trial_id, "number": 0, "study": "s"},
                                       "val/auroc")  # fmt: skip
        fit(Constant(), reporter, max_epochs=2)
    finally:
        ACTIVE.pop(trial._trial_id)
    assert reporter.pruned_at is None and study.trials[0].intermediate_values == {}
