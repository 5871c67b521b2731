"""The training run's side of a sweep (cxrlab.sweep.trial) with a real Lightning Trainer."""

import optuna
import pytest
import pytorch_lightning as pl
import torch

from cxrlab.sweep.trial import ACTIVE, OptunaTrialReporter


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
