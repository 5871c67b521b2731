"""The sweeper's pure parts: search-space grammar, override round trips, trial outcomes,
which checkpoints a sweep keeps."""

import math

import optuna
import pandas as pd
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from cxrlab.sweep.report import write_study_report
from cxrlab.sweep.search_space import SearchSpaceError, parse, to_override
from cxrlab.sweep.study import mask, remove_checkpoints
from cxrlab.sweep.sweeper import (
    OptunaSweep,
    SweepError,
    direction_for,
    directions_for,
    job_failure,
)


def test_grammar_maps_to_optuna_distributions():
    space, fixed = parse(
        {
            "model.optimizer.lr": "tag(log, interval(1e-4, 3e-3))",
            "model.dropout": "interval(0.0, 0.5)",
            "trainer.max_epochs": "int(interval(4, 12))",
            "data.batch_size": "choice(16, 32, 64)",
            "model": "choice(densenet121_xrv, resnet18)",
            "data.preprocess.size": "range(64, 128, 32)",
            "model.loss.name": "focal",
        }
    )
    assert space["model.optimizer.lr"] == FloatDistribution(1e-4, 3e-3, log=True)
    assert space["model.dropout"] == FloatDistribution(0.0, 0.5)
    assert space["trainer.max_epochs"] == IntDistribution(4, 12)
    assert space["data.batch_size"] == CategoricalDistribution([16, 32, 64])
    assert space["model"] == CategoricalDistribution(["densenet121_xrv", "resnet18"])
    assert space["data.preprocess.size"] == IntDistribution(64, 128, step=32)
    assert fixed == ["model.loss.name=focal"]


def test_command_line_sweeps_join_and_win_over_the_config():
    space, fixed = parse(
        {"model.dropout": "interval(0.0, 0.5)", "data.batch_size": "choice(16, 32)"},
        ["experiment=template", "model.dropout=interval(0.1,0.2)", "data.batch_size=8"],
    )
    assert space == {"model.dropout": FloatDistribution(0.1, 0.2)}
    assert fixed == ["experiment=template", "data.batch_size=8"]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"model.optimizer.lr": "tag(log, interval(0.0, 1e-2))"}, "above 0"),
        ({"model": "tag(log, choice(a, b))"}, r"interval\(\) or range\(\)"),
        ({"model.dropout": "interval(0.0"}, "cannot parse"),
    ],
)
def test_bad_search_space_names_the_key(params, message):
    with pytest.raises(SearchSpaceError, match=message):
        parse(params)


@pytest.mark.parametrize(
    "value", ["adam", "sensitivity=0.95", "a b", "it's", 3, 0.1, 1e-7, True, False, None]
)
def test_overrides_parse_back_to_the_sampled_value(value):
    (override,) = OverridesParser.create().parse_overrides([to_override("k", value)])
    assert override.value() == value
    assert type(override.value()) is type(value)


def _ret(status, value):
    r = JobReturn()
    r.status = status
    r._return_value = value
    return r


@pytest.mark.parametrize(
    "status, value, state, reason",
    [
        (JobStatus.COMPLETED, 0.81, TrialState.COMPLETE, None),
        (JobStatus.COMPLETED, math.nan, TrialState.FAIL, "nan"),
        (JobStatus.COMPLETED, None, TrialState.FAIL, "no value"),
        (JobStatus.FAILED, optuna.TrialPruned("pruned at 2"), TrialState.PRUNED, "pruned at 2"),
        (JobStatus.FAILED, ValueError("model.optimizer.name='x'"), TrialState.FAIL, "ValueError"),
        (JobStatus.FAILED, RuntimeError("CUDA out of memory"), TrialState.FAIL, "out of memory"),
    ],
)
def test_job_outcome_becomes_a_trial_state_with_a_reason(status, value, state, reason):
    got_state, got_reason = job_failure(_ret(status, value))
    assert got_state == state
    if reason is None:
        assert got_reason is None
    else:
        assert reason in got_reason


def test_direction_follows_the_metric():
    assert direction_for("auto", "val/auroc") == "maximize"
    assert direction_for("auto", "val/loss") == "minimize"
    assert direction_for("minimize", "val/auroc") == "minimize"
    with pytest.raises(SweepError, match="direction"):
        direction_for("up", "val/auroc")


def test_one_direction_per_optimized_metric():
    assert directions_for("auto", ["val/auroc", "val/loss"]) == ["maximize", "minimize"]
    assert directions_for(["minimize", "auto"], ["val/ece", "val/auroc"]) == [
        "minimize",
        "maximize",
    ]
    with pytest.raises(SweepError, match=r"gives 2 directions for 1 optimized metrics"):
        directions_for(["maximize", "minimize"], "val/auroc")


@pytest.mark.parametrize(
    ("value", "state", "reason"),
    [
        ([0.8, 0.3], TrialState.COMPLETE, None),
        ([0.8, math.inf], TrialState.FAIL, "inf"),
        ([0.8, None], TrialState.FAIL, "no value"),
        (0.8, TrialState.FAIL, "1 values for 2 objectives"),
    ],
)
def test_a_multi_objective_run_returns_one_finite_value_per_objective(value, state, reason):
    got_state, got_reason = job_failure(_ret(JobStatus.COMPLETED, value), n_objectives=2)
    assert got_state == state and (reason is None or reason in got_reason)


def test_a_multi_objective_study_reports_and_keeps_its_pareto_front(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    # (auroc, loss): 0 and 2 are on the front, 1 is beaten by 0 on both, 3 by 2
    points = {0: (0.9, 0.5), 1: (0.8, 0.6), 2: (0.7, 0.2), 3: (0.6, 0.3)}
    for n, values in points.items():
        study.add_trial(
            optuna.trial.create_trial(
                values=list(values),
                params={"model.dropout": n / 10},
                distributions={"model.dropout": optuna.distributions.FloatDistribution(0, 1)},
                user_attrs={"run_dir": _trial_folder(tmp_path, n)},
            )
        )
    summary = write_study_report(
        study, tmp_path / "study", metric=["val/auroc", "val/loss"], fixed=["model=resnet18"],
        storage_url=None, plots=True,
    )  # fmt: skip
    front = summary["pareto_front"]
    assert [p["trial"] for p in front] == [0, 2]
    assert front[1]["values"] == {"val/auroc": 0.7, "val/loss": 0.2}
    assert front[1]["retrain"] == "python train.py model=resnet18 model.dropout=0.2"
    assert summary["direction"] == ["maximize", "minimize"] and "best_trial" not in summary
    table = pd.read_csv(tmp_path / "study" / "trials.csv")
    assert list(table["number"][:2]) == [0, 2] and list(table["pareto"]) == [1, 1, 0, 0]
    assert list(table.loc[table["number"] == 3, "values.val/loss"]) == [0.3]
    assert (tmp_path / "study" / "plots" / "pareto_front.png").stat().st_size > 10_000
    remove_checkpoints(study, keep=1)  # no single best: the whole front keeps its checkpoints
    kept = sorted(int(p.parent.parent.name[6:]) for p in tmp_path.glob("trial_*/*/best.ckpt"))
    assert kept == [0, 2]


def test_storage_password_is_masked_in_logs():
    assert mask("postgresql://optuna:s3cret@db:5432/x") == "postgresql://optuna:***@db:5432/x"
    assert mask(None) == "in-memory"


def _trial_folder(root, number: int) -> str:
    run = root / f"trial_{number}"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("best.ckpt", "last.ckpt"):
        (run / "checkpoints" / name).write_bytes(b"x" * 1000)
    (run / "train.log").write_text("log")
    (run / "report").mkdir()
    (run / "report" / "metrics.json").write_text("{}")
    return str(run)


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_only_the_best_complete_trials_keep_their_checkpoints(tmp_path, direction):
    study = optuna.create_study(direction=direction)
    values = {0: 0.7, 1: 0.9, 2: 0.8, 3: 0.6}
    for n, value in values.items():
        study.add_trial(
            optuna.trial.create_trial(
                value=value,
                params={},
                distributions={},
                user_attrs={"run_dir": _trial_folder(tmp_path, n)},
            )
        )
    for n, state in ((4, TrialState.PRUNED), (5, TrialState.FAIL), (6, TrialState.RUNNING)):
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                params={},
                distributions={},
                intermediate_values={0: 0.95},  # a pruned trial's high early value: still pruned
                user_attrs={"run_dir": _trial_folder(tmp_path, n)},
            )
        )
    # a trial whose folder is on another worker's machine (its value ranks third either way),
    # and one that never got a folder
    study.add_trial(optuna.trial.create_trial(value=0.75, user_attrs={"run_dir": "/elsewhere/t7"}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))

    def with_checkpoints():
        return sorted(int(p.parent.parent.name[6:]) for p in tmp_path.glob("trial_*/*/best.ckpt"))

    files, size = remove_checkpoints(study, keep=2)
    best_two = [1, 2] if direction == "maximize" else [0, 3]
    assert with_checkpoints() == sorted(best_two + [6])  # the running trial is left alone
    assert (files, size) == (8, 8_000)  # two complete trials, the pruned and the failed one
    assert len(list(tmp_path.glob("trial_*/train.log"))) == 7  # nothing else is touched
    assert len(list(tmp_path.glob("trial_*/report/metrics.json"))) == 7
    assert remove_checkpoints(study, keep=2) == (0, 0)  # idempotent
    remove_checkpoints(study, keep=0)
    assert with_checkpoints() == [6]


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        *(
            ({"keep_checkpoints": k}, "hydra.sweeper.keep_checkpoints")
            for k in (-1, 1.5, "3", True)
        ),
        ({"report": "mean"}, "hydra.sweeper.report='mean'"),
    ],
)
def test_bad_sweeper_settings_name_the_key(setting, match):
    with pytest.raises(SweepError, match=match):
        OptunaSweep(
            sampler=None,
            pruner=None,
            direction="auto",
            storage=None,
            study_name="s",
            n_trials=1,
            n_jobs=1,
            params=None,
            max_failures=1,
            heartbeat_interval=None,
            **setting,
        )


# ---- configs written for hydra-optuna-sweeper -----------------------------------------------


def _sweep(**setting):
    kw = dict(sampler=None, pruner=None, direction="auto", storage=None, study_name="s",
              n_trials=1, n_jobs=1, params=None, max_failures=1, heartbeat_interval=None)  # fmt: skip
    return OptunaSweep(**{**kw, **setting})


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"max_failure_rate": 1.5}, r"max_failure_rate=1.5: a fraction from 0 to 1"),
        ({"custom_search_space": "no.such.fn"}, r"custom_search_space='no.such.fn': no such"),
        ({"direction": ["maximize", "upward"]}, r"direction='upward': use auto"),
        ({"cv": "yes"}, r"hydra.sweeper.cv='yes': true"),
        (
            {
                "search_space": {
                    "datamodule.batch_size": {"type": "categorical", "choices": [32, 64]},
                    "model.lr": {"type": "float", "low": 0.0001, "high": 0.2, "log": True},
                    "model.depth": {"type": "int", "low": 2, "high": 8, "step": 2},
                }
            },  # fmt: skip
            r"write the same space as hydra.sweeper.params:\n"
            r"      datamodule.batch_size: choice\(32, 64\)\n"
            r"      model.lr: tag\(log, interval\(0.0001, 0.2\)\)\n"
            r"      model.depth: range\(2, 8, 2\)",
        ),
    ],
)
def test_the_old_plugins_settings_are_checked_with_what_to_write(setting, match):
    with pytest.raises(SweepError, match=match):
        _sweep(**setting)


def test_the_old_plugins_names_sampler_group_and_target_compose_to_this_sweeper(tmp_path):
    """`override /hydra/sweeper: optuna`, the hydra/sweeper/sampler group and the plugin's own
    `_target_` all reach cxrlab's sweeper when hydra-optuna-sweeper is not installed, with
    `study_name: null` and `storage: null` accepted."""
    from conftest import compose
    from hydra.core.plugins import Plugins

    conf = tmp_path / "hparams_search"
    conf.mkdir()
    (conf / "old.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n"
        "  - override /hydra/sweeper: optuna\n"
        "  - override /hydra/sweeper/sampler: random\n"
        "hydra:\n"
        "  sweeper:\n"
        "    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper\n"
        "    storage: null\n"
        "    study_name: null\n"
        "    direction: [maximize]\n"
        "    max_failure_rate: 0.5\n"
        "    sampler:\n"
        "      seed: 7\n"
        "    params:\n"
        "      model.dropout: interval(0.0, 0.5)\n"
    )
    cfg = compose("train.yaml", [f"hydra.searchpath=[file://{tmp_path}]", "hparams_search=old"])
    assert cfg.hydra.sweeper.sampler == {"_target_": "optuna.samplers.RandomSampler", "seed": 7}
    sweeper = Plugins.instance()._instantiate(cfg.hydra.sweeper)
    impl = sweeper._impl
    assert type(sweeper).__name__ == "OptunaSweeper" and isinstance(impl, OptunaSweep)
    assert isinstance(impl.sampler, optuna.samplers.RandomSampler)
    assert impl.study_name is None and impl.storage_url is None and impl.max_failure_rate == 0.5
    assert direction_for(impl.direction, "val/auroc") == "maximize"


def test_the_grid_sampler_takes_its_grid_from_params():
    from cxrlab.sweep.search_space import PendingGrid, grid_of, grid_sampler

    space, _ = parse({"data.batch_size": "choice(8, 16)", "x": "range(1, 5, 2)"})
    assert grid_of(space) == {"data.batch_size": [8, 16], "x": [1, 3, 5]}
    assert isinstance(grid_sampler(seed=3), PendingGrid)
    space, _ = parse({"lr": "interval(0.1, 0.2)"})
    with pytest.raises(SearchSpaceError, match="lr: a grid needs choice"):
        grid_of(space)


def focal_gamma(cfg, trial):
    """A custom_search_space: focal's gamma only where the loss is focal."""
    if trial.params["model.loss.name"] == "focal":
        trial.suggest_float("model.loss.gamma", 1.0, 3.0)


def test_custom_search_space_adds_conditional_parameters():
    sweep = _sweep(custom_search_space=f"{__name__}.focal_gamma")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space, _ = parse({"model.loss.name": "choice(ce, focal)", "model.dropout": "interval(0, 0.5)"})
    losses = set()
    for _ in range(8):
        trial = sweep._ask_new(study, space)
        losses.add(trial.params["model.loss.name"])
        assert ("model.loss.gamma" in trial.params) == (trial.params["model.loss.name"] == "focal")
        study.tell(trial, 0.5)
    assert losses == {"ce", "focal"}
