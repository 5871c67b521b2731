"""``hydra/sweeper: cxrlab_optuna``: the Hydra face of ``cxrlab.sweep.sweeper.OptunaSweep``.

Hydra only instantiates sweepers that live in the ``hydra_plugins`` namespace; the logic lives
in cxrlab (see that module for why cxrlab has its own sweeper). No `from __future__ import
annotations` here: Hydra executes plugin modules in a way that breaks dataclasses with it.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper

import cxrlab  # noqa: F401  (registers the resolvers the sweep configs use)


@dataclass
class CXRLabOptunaSweeperConf:
    _target_: str = "hydra_plugins.cxrlab_optuna_sweeper.cxrlab_optuna_sweeper.CXRLabOptunaSweeper"
    # an optuna sampler / pruner config with _target_ (null pruner: no pruning)
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0}
    )
    pruner: Any = None
    # what each epoch tells the pruner: "last" (that epoch's validation value) or "best" (the
    # best so far: the value the trial returns if it stops now)
    report: str = "best"
    # auto: minimize for loss-like optimized_metric names, maximize otherwise
    direction: str = "auto"
    # a database URL (sqlite:///..., postgresql://...), or null for an in-memory study
    storage: Any = None
    study_name: str = "cxrlab"
    # the study's total number of counted (complete or pruned) trials, across re-runs
    n_trials: int = 20
    # trials asked for and launched together (useful with a parallel launcher)
    n_jobs: int = 1
    # stop this sweep process after this many failed trials
    max_failures: int = 5
    # seconds between heartbeats of a running trial; a trial silent for twice that is failed
    heartbeat_interval: Any = 30
    plots: bool = True
    params: Any = None
    # parameter sets to try first (e.g. a known-good baseline), once per study
    enqueue: Any = None
    # checkpoints (*.ckpt) stay only in the run folders of this many best complete trials;
    # pruned and failed trials lose theirs; null keeps every trial's
    keep_checkpoints: Any = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="cxrlab_optuna", node=CXRLabOptunaSweeperConf
)


class CXRLabOptunaSweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        from cxrlab.sweep.sweeper import OptunaSweep

        self._impl = OptunaSweep(**kwargs)

    def setup(self, *, hydra_context, task_function, config) -> None:
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self._impl.sweep(arguments)
