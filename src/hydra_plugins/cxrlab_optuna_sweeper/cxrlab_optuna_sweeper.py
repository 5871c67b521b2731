"""``hydra/sweeper: cxrlab_optuna``: the Hydra face of ``cxrlab.sweep.sweeper.OptunaSweep``.

Hydra only instantiates sweepers that live in the ``hydra_plugins`` namespace; the logic lives
in cxrlab (see that module for why cxrlab has its own sweeper). No `from __future__ import
annotations` here: Hydra executes plugin modules in a way that breaks dataclasses with it.
"""

import importlib.machinery
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import MISSING

import cxrlab  # noqa: F401  (registers the resolvers the sweep configs use)


@dataclass
class CXRLabOptunaSweeperConf:
    # the sampler comes from the hydra/sweeper/sampler group, as in hydra-optuna-sweeper
    # (override /hydra/sweeper/sampler: random), or is written out with its _target_
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    _target_: str = "hydra_plugins.cxrlab_optuna_sweeper.cxrlab_optuna_sweeper.CXRLabOptunaSweeper"
    # an optuna sampler / pruner config with _target_ (null pruner: no pruning); MISSING here
    # so the group's choice is not overwritten by this node
    sampler: Any = MISSING
    pruner: Any = None
    # what each epoch tells the pruner: "last" (that epoch's validation value) or "best" (the
    # best so far: the value the trial returns if it stops now)
    report: str = "best"
    # auto: minimize for loss-like optimized_metric names, maximize otherwise; a list, one per
    # metric of a list optimized_metric: a multi-objective study (best.yaml: its Pareto front)
    direction: Any = "auto"
    # a database URL (sqlite:///..., postgresql://...), or null for an in-memory study
    storage: Any = None
    # null: Optuna names the study itself (a new study each run)
    study_name: Any = "cxrlab"
    # the study's total number of counted (complete or pruned) trials, across re-runs
    n_trials: int = 20
    # trials asked for and launched together (useful with a parallel launcher)
    n_jobs: int = 1
    # stop this sweep process after this many failed trials
    max_failures: int = 5
    # hydra-optuna-sweeper's rule, when set: stop once failed / launched trials of this
    # process exceed it (0.0: at the first failure)
    max_failure_rate: Any = None
    # a function (cfg, trial) that suggests more parameters on each trial (conditional ones),
    # given by its import path; its suggestions become the trial's overrides too
    custom_search_space: Any = None
    # hydra-optuna-sweeper's pre-1.2 search space: refused with what to write instead
    search_space: Any = None
    # seconds between heartbeats of a running trial; a trial silent for twice that is failed
    heartbeat_interval: Any = 30
    plots: bool = True
    params: Any = None
    # parameter sets to try first (e.g. a known-good baseline), once per study
    enqueue: Any = None
    # checkpoints (*.ckpt) stay only in the run folders of this many best complete trials;
    # pruned and failed trials lose theirs; null keeps every trial's
    keep_checkpoints: Any = None
    # cross-validated trials: each trains every fold of data.split.folds and returns the mean
    cv: bool = False


# hydra-optuna-sweeper's sampler group: `override /hydra/sweeper/sampler: random`, or
# hydra/sweeper/sampler=cmaes on the command line; each sampler's own arguments go under
# hydra.sweeper.sampler (seed, n_startup_trials, ...). grid builds its grid from params
SAMPLERS = {
    "tpe": "optuna.samplers.TPESampler",
    "random": "optuna.samplers.RandomSampler",
    "cmaes": "optuna.samplers.CmaEsSampler",
    "nsgaii": "optuna.samplers.NSGAIISampler",
    "nsgaiii": "optuna.samplers.NSGAIIISampler",
    "qmc": "optuna.samplers.QMCSampler",
    "gp": "optuna.samplers.GPSampler",
    "bruteforce": "optuna.samplers.BruteForceSampler",
    "grid": "cxrlab.sweep.search_space.grid_sampler",
}
_store = ConfigStore.instance()
for _name, _target in SAMPLERS.items():
    _store.store(
        group="hydra/sweeper/sampler", name=_name, node={"_target_": _target, "seed": None}
    )
_store.store(group="hydra/sweeper", name="cxrlab_optuna", node=CXRLabOptunaSweeperConf)


class CXRLabOptunaSweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        from cxrlab.sweep.sweeper import OptunaSweep

        self._impl = OptunaSweep(**kwargs)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self._impl.sweep(arguments)


# Configs written for hydra-optuna-sweeper (lightning-hydra-template's hparams_search files) say
# `override /hydra/sweeper: optuna` and `_target_: hydra_plugins.hydra_optuna_sweeper.
# optuna_sweeper.OptunaSweeper`. Where that plugin is not installed (it pins optuna<3), both
# name this sweeper: Hydra finds plugin classes by module and class name, then imports that
# path, which is registered here (in this process only; nothing is written to disk).
PLUGIN_TARGET = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
_PLUGIN_MODULE, _PLUGIN_CLASS = PLUGIN_TARGET.rsplit(".", 1)
if (
    _PLUGIN_MODULE not in sys.modules
    and importlib.util.find_spec(_PLUGIN_MODULE.rsplit(".", 1)[0]) is None
):

    class OptunaSweeper(CXRLabOptunaSweeper):
        """cxrlab's sweeper under hydra-optuna-sweeper's class name (docs/sweeps.md has what
        each of that plugin's settings means here)."""

    OptunaSweeper.__module__ = _PLUGIN_MODULE
    _parent_name = _PLUGIN_MODULE.rsplit(".", 1)[0]
    _parent = types.ModuleType(_parent_name)
    _parent.__spec__ = importlib.machinery.ModuleSpec(_parent_name, None, is_package=True)
    _parent.__path__ = []
    _module = types.ModuleType(_PLUGIN_MODULE)
    _module.__spec__ = importlib.machinery.ModuleSpec(_PLUGIN_MODULE, None)
    setattr(_module, _PLUGIN_CLASS, OptunaSweeper)
    _parent.optuna_sweeper = _module
    sys.modules[_parent_name], sys.modules[_PLUGIN_MODULE] = _parent, _module
    _store.store(group="hydra/sweeper", name="optuna", node=CXRLabOptunaSweeperConf)
