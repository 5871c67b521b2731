"""cxrlab's Optuna sweeper: Hydra launches the trials, Optuna's ask-and-tell API steers them.

Why not hydra-optuna-sweeper (1.3.0, its latest release): it pins optuna<3, and optuna 2.10
breaks on SQLAlchemy 2 (every database storage fails); installed beside a current optuna with
``--no-deps`` it runs, but one failing trial still ends the whole sweep, a trial never sees its
``optuna.Trial`` (so no pruning), and a killed sweep leaves trials RUNNING forever. This
sweeper keeps that plugin's configuration surface (sampler, direction, storage, study_name,
n_trials, n_jobs, params in the same override grammar) and closes those holes.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import warnings
from pathlib import Path

import optuna
from hydra.core.utils import JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig
from optuna.trial import TrialState

from cxrlab.sweep import study as studies
from cxrlab.sweep.report import write_study_report
from cxrlab.sweep.search_space import PendingGrid, grid_of, parse, quote, to_override
from cxrlab.sweep.trial import ACTIVE
from cxrlab.utils.resolvers import lower_is_better, metric_names

log = logging.getLogger(__name__)


class SweepError(RuntimeError):
    pass


def directions_for(direction, metric) -> list[str]:
    """One direction per optimized metric: ``direction`` is one (auto, maximize, minimize) or a
    list as long as ``optimized_metric`` (several: a multi-objective study)."""
    metrics = metric_names(metric) or [None]
    if isinstance(direction, list | tuple) or type(direction).__name__ == "ListConfig":
        given = [str(d) for d in direction]
    else:
        given = [str(direction)] * len(metrics)
    if len(given) != len(metrics):
        raise SweepError(
            f"hydra.sweeper.direction={given} gives {len(given)} directions for "
            f"{len(metrics)} optimized metrics ({metrics}): one direction per metric, e.g. "
            f"optimized_metric=[{','.join(m or 'val/auroc' for m in metrics)}] and as many "
            "directions (auto: maximize, or minimize for losses)"
        )
    out = []
    for d, m in zip(given, metrics):
        if d == "auto":
            d = "minimize" if lower_is_better(m) else "maximize"
        if d not in ("maximize", "minimize"):
            raise SweepError(f"hydra.sweeper.direction={d!r}: use auto, maximize, minimize")
        out.append(d)
    return out


def direction_for(direction, metric: str | None) -> str:
    """The one direction of a single-objective study (see ``directions_for``)."""
    return directions_for(direction, metric)[0]


def _values(value, n: int) -> list[float] | str:
    """A run's return value as ``n`` finite floats, or why it is not."""
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        values = list(value)
    else:
        values = [value]
    if len(values) != n:
        return f"the run returned {len(values)} values for {n} objectives"
    out = []
    for v in values:
        if v is None:
            return "the run returned no value for optimized_metric"
        try:
            v = float(v)
        except (TypeError, ValueError):
            return f"the run returned {v!r}, not a number"
        if not math.isfinite(v):
            return f"optimized_metric is {v} (training diverged?)"
        out.append(v)
    return out


def job_failure(ret, n_objectives: int = 1) -> tuple[TrialState, str | None]:
    """The trial state and reason for one finished Hydra job."""
    if ret.status == JobStatus.COMPLETED:
        values = _values(ret.return_value, n_objectives)
        if isinstance(values, str):
            return TrialState.FAIL, values
        return TrialState.COMPLETE, None
    exc = ret._return_value
    if isinstance(exc, optuna.TrialPruned):
        return TrialState.PRUNED, str(exc)
    text = f"{type(exc).__name__}: {exc}".strip()
    if "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
        text = "out of memory: " + text
    return TrialState.FAIL, text[:2000]


def _function(path: str):
    """``custom_search_space``: the function at an import path (``pkg.module.fn``)."""
    import importlib

    module, _, name = str(path).rpartition(".")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise SweepError(
            f"hydra.sweeper.custom_search_space={path!r}: no such function ({e}); give the "
            "import path of a function (cfg, trial) that calls trial.suggest_*"
        ) from e
    if not callable(fn):
        raise SweepError(f"hydra.sweeper.custom_search_space={path!r}: not a function")
    return fn


class OptunaSweep:
    def __init__(
        self,
        sampler,
        pruner,
        direction: str,
        storage: str | None,
        study_name: str,
        n_trials: int,
        n_jobs: int,
        params,
        max_failures: int,
        heartbeat_interval: int | None,
        plots: bool = True,
        enqueue=None,
        keep_checkpoints: int | None = None,
        report: str = "best",
        max_failure_rate: float | None = None,
        custom_search_space: str | None = None,
        search_space=None,
        cv: bool = False,
    ):
        if search_space:
            from cxrlab.sweep.search_space import from_plugin_search_space

            lines = "".join(
                f"\n      {k}: {v}" for k, v in from_plugin_search_space(search_space).items()
            )
            raise SweepError(
                "hydra.sweeper.search_space is hydra-optuna-sweeper's old form (removed in its "
                f"1.2); write the same space as hydra.sweeper.params:{lines}"
            )
        if max_failure_rate is not None and not 0.0 <= float(max_failure_rate) <= 1.0:
            raise SweepError(
                f"hydra.sweeper.max_failure_rate={max_failure_rate!r}: a fraction from 0 to 1"
            )
        self.max_failure_rate = None if max_failure_rate is None else float(max_failure_rate)
        self.custom_search_space = _function(custom_search_space) if custom_search_space else None
        self.sampler = sampler
        self.pruner = pruner
        # a bad value is named before any trial (their number is checked against the metrics')
        for d in (
            direction
            if isinstance(direction, list | tuple) or type(direction).__name__ == "ListConfig"
            else [direction]
        ):
            direction_for(d, None)
        self.direction = direction
        if not isinstance(cv, bool):
            raise SweepError(
                f"hydra.sweeper.cv={cv!r}: true (each trial trains every fold of "
                "data.split.folds and returns their mean) or false"
            )
        self.cv = cv
        self.folds: int | None = None
        self.storage_url = str(storage) if storage else None
        # null: Optuna names the study (a new one each run, as in hydra-optuna-sweeper)
        self.study_name = None if study_name is None else str(study_name)
        self.n_trials = int(n_trials)
        self.n_jobs = max(1, int(n_jobs))
        self.params = dict(params or {})
        self.max_failures = int(max_failures)
        self.heartbeat_interval = heartbeat_interval
        self.plots = plots
        self.enqueue = [dict(e) for e in (enqueue or [])]
        if keep_checkpoints is not None and (
            isinstance(keep_checkpoints, bool)
            or not isinstance(keep_checkpoints, int)
            or keep_checkpoints < 0
        ):
            raise SweepError(
                f"hydra.sweeper.keep_checkpoints={keep_checkpoints!r}: give the number of best "
                "complete trials whose checkpoints stay (0 or more), or null to keep every "
                "trial's checkpoints"
            )
        self.keep_checkpoints = keep_checkpoints
        from cxrlab.sweep.trial import REPORTS

        # checked here, before any trial; each training run reads it from its Hydra config
        if report not in REPORTS:
            raise SweepError(
                f"hydra.sweeper.report={report!r}: use last (each epoch's validation value) or "
                "best (the best so far, what the trial returns if it stops now)"
            )
        self.launcher: Launcher | None = None
        self.config: DictConfig | None = None
        self.sampler_conf = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        # the sampler's own config: a continued study gets a sampler seeded anew (below)
        self.sampler_conf = config.hydra.sweeper.get("sampler")
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        assert self.launcher is not None and self.config is not None
        # optuna marks set_metric_names/fail_stale_trials "experimental" and warns that the
        # heartbeat is meant for Study.optimize: this sweeper records the heartbeat itself
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        space, fixed = parse(self.params, arguments)
        metric = self.config.get("optimized_metric")
        directions = directions_for(self.direction, metric)
        direction = directions[0] if len(directions) == 1 else ",".join(directions)
        fixed = self._cross_validation(space, fixed)
        storage = studies.open_storage(self.storage_url, self.heartbeat_interval)
        if storage is None:
            log.warning("hydra.sweeper.storage is null: the study lives in memory and is lost")
        if self.study_name is None:
            log.warning(
                "hydra.sweeper.study_name is null: Optuna names the study, so running the "
                "command again starts a new one (give it a name to continue it)"
            )
        sampler = self._sampler_for(storage)
        if isinstance(sampler, PendingGrid):  # hydra/sweeper/sampler=grid: the params' grid
            grid = grid_of(space)
            sampler = optuna.samplers.GridSampler(grid, seed=sampler.seed)
            log.info("Grid of %d points: %s", math.prod(len(v) for v in grid.values()), grid)
        pruner = self.pruner
        if len(directions) > 1 and pruner is not None:
            log.info("Multi-objective study: no pruning (Optuna prunes single-objective studies)")
            pruner = None
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=sampler,
            pruner=pruner or optuna.pruners.NopPruner(),
            directions=directions,
            load_if_exists=True,
        )
        if metric:
            study.set_metric_names(metric_names(metric))
        for params in self.enqueue:
            unknown = set(params) - set(space)
            if unknown:
                raise SweepError(
                    f"hydra.sweeper.enqueue names {sorted(unknown)}, which are not in the "
                    f"search space {sorted(space)}"
                )
            study.enqueue_trial(params, skip_if_exists=True)
        out = Path(str(self.config.hydra.sweep.dir))
        out.mkdir(parents=True, exist_ok=True)
        studies.recover_killed_trials(study)
        studies.fail_stale(study)
        c = studies.counts(study)
        log.info(
            "Study %r in %s (%s %s): %d complete, %d pruned, %d failed so far; target %d "
            "trials in all; folder %s",
            study.study_name,
            studies.mask(self.storage_url),
            direction,
            metric,
            c["complete"],
            c["pruned"],
            c["fail"],
            self.n_trials,
            out,
        )
        log.info("Search space: %s", {k: str(v) for k, v in space.items()})
        # where a hydra-optuna-sweeper user would expect otherwise (docs/sweeps.md has the table)
        log.info(
            "n_trials=%d is the study's total, across every run of this command and every "
            "worker (hydra-optuna-sweeper runs n_trials more each time); a failed trial does "
            "not count and the sweep goes on until %s",
            self.n_trials,
            f"failed/launched > {self.max_failure_rate:g} (max_failure_rate) or "
            f"{self.max_failures} failures (max_failures)"
            if self.max_failure_rate is not None
            else f"{self.max_failures} failures (max_failures)",
        )

        def report(plots: bool = False):
            return write_study_report(
                study,
                out,
                metric=metric_names(metric) or "value",
                fixed=fixed,
                storage_url=self.storage_url,
                plots=plots,
            )

        failures, launched = 0, 0
        try:
            while True:
                studies.fail_stale(study)
                room = studies.room_left(study, self.n_trials)
                if room <= 0:
                    break
                batch = []
                for _ in range(min(self.n_jobs, room)):
                    trial = self._ask_new(study, space)
                    if trial is None:
                        break
                    if studies.is_surplus(study, trial, self.n_trials):
                        trial.set_user_attr("fail_reason", "surplus: the study was full")
                        study.tell(trial, state=TrialState.FAIL)
                        continue
                    batch.append(trial)
                if not batch:
                    break
                failures += self._run_batch(study, batch, fixed, launched)
                launched += len(batch)
                report()
                self._remove_checkpoints(study)
                rate = self.max_failure_rate
                if failures >= self.max_failures or (
                    rate is not None and failures / launched > rate
                ):
                    rule = (
                        f"max_failures={self.max_failures}"
                        if failures >= self.max_failures
                        else f"max_failure_rate={rate:g}: {failures} of {launched} launched"
                    )
                    raise SweepError(
                        f"{failures} trials failed in this sweep process "
                        f"(hydra.sweeper.{rule}); see fail_reason "
                        f"in {out / 'trials.csv'} and each trial's train.log"
                    )
        finally:
            summary = report(plots=self.plots)
            self._remove_checkpoints(study)
            self._log_study(study, summary, out, metric)
        for point in summary.get("pareto_front", []):
            log.info(
                "Pareto front: trial %d %s with %s. Retrain it: %s",
                point["trial"],
                point["values"],
                point["params"],
                point["retrain"],
            )
        if "best_trial" in summary:
            log.info(
                "Best trial %d: %s=%.4f with %s. Retrain it: %s",
                summary["best_trial"],
                metric,
                summary["best_value"],
                summary["best_params"],
                summary["retrain"],
            )
        log.info("Study report: %s (trials.csv, best.yaml, plots/)", out)

    def _cross_validation(self, space: dict, fixed: list[str]) -> list[str]:
        """``hydra.sweeper.cv``: check it against ``data.split.folds``; the fixed overrides
        without a fold (each trial runs them all)."""
        from omegaconf import OmegaConf

        folds = OmegaConf.select(self.config, "data.split.folds", default=None)
        if not self.cv:
            if folds:
                log.info(
                    "data.split.folds=%s: each trial trains fold %s only; hydra.sweeper.cv=true "
                    "trains every fold and optimizes their mean",
                    folds,
                    OmegaConf.select(self.config, "data.split.fold", default=0),
                )
            return fixed
        if not folds:
            raise SweepError(
                "hydra.sweeper.cv=true trains every fold of each trial: set the number of folds "
                "too, e.g. data.split.folds=5"
            )
        tuned = sorted(k for k in space if k in ("data.split.fold", "data.split.folds"))
        if tuned:
            raise SweepError(
                f"hydra.sweeper.cv=true runs every fold itself: {tuned} cannot be search "
                "parameters; give data.split.folds=K as a plain override"
            )
        self.folds = int(folds)
        log.info(
            "Cross-validated trials: each trains its %d folds one after another and returns "
            "their mean (%d times the training of a plain trial); the pruner sees fold i's "
            "epoch e at step i*max_epochs+e, and a pruned fold ends its trial",
            self.folds,
            self.folds,
        )
        return [o for o in fixed if not o.startswith("data.split.fold=")]

    def _log_study(self, study, summary: dict, out: Path, metric) -> None:
        """The study's summary run in W&B, where the trials log there (never fatal)."""
        from cxrlab.sweep.report import trials_table
        from cxrlab.utils.loggers import log_study_summary

        try:
            names = metric_names(metric)
            table = trials_table(study, names if len(names) == len(study.directions) else None)
            log_study_summary(self.config.get("logger"), study.study_name, table, summary, out)
        except Exception as e:  # a summary run must never cost the sweep its results
            log.warning("W&B study summary not logged: %s", e)

    def _sampler_for(self, storage):
        """The configured sampler; for a study that already has trials, the same sampler
        seeded with ``seed + number of trials so far``.

        A sampler seeded as before would propose the same start-up trials again (a resumed
        sweep repeated them); the new seed is still deterministic for a given study state.
        """
        conf = self.sampler_conf
        if storage is None or self.study_name is None or conf is None or conf.get("seed") is None:
            return self.sampler
        try:
            done = len(optuna.load_study(study_name=self.study_name, storage=storage).trials)
        except KeyError:  # a new study
            return self.sampler
        if not done:
            return self.sampler
        import hydra
        from omegaconf import open_dict

        conf = conf.copy()
        with open_dict(conf):
            conf.seed = int(conf.seed) + done
        log.info(
            "Continuing a study of %d trials: sampler seed %d (hydra.sweeper.sampler.seed + "
            "trials so far), so no start-up trial is proposed again",
            done,
            conf.seed,
        )
        return hydra.utils.instantiate(conf)

    def _ask_new(self, study: optuna.Study, space: dict, tries: int = 20):
        """``study.ask``, never returning parameters an earlier trial already tried.

        A repeat (possible with small categorical spaces, or two workers seeded alike) is told
        as failed with ``duplicate_of`` and not run; it does not count towards ``n_trials``.
        Enqueued trials (baselines, a killed trial's retry) are taken as they are. None when
        every one of ``tries`` proposals was a repeat: the search space is used up.
        """
        for _ in range(tries):
            trial = study.ask(space)
            if self.custom_search_space is not None:  # conditional parameters, define-by-run
                self.custom_search_space(self.config, trial)
            if studies.is_enqueued(trial):
                return trial
            earlier = studies.same_params_as(study, trial)
            if earlier is None:
                return trial
            trial.set_user_attr("duplicate_of", earlier)
            trial.set_user_attr("fail_reason", f"not run: the same parameters as trial {earlier}")
            study.tell(trial, state=TrialState.FAIL)
            log.info("Proposal %d repeats trial %d: not run, asking again", trial.number, earlier)
        log.warning(
            "%d proposals in a row repeated earlier trials: the search space looks used up",
            tries,
        )
        return None

    def _remove_checkpoints(self, study: optuna.Study) -> None:
        if self.keep_checkpoints is None:
            return
        try:
            files, size = studies.remove_checkpoints(study, self.keep_checkpoints)
        except OSError as e:  # a full or read-only disk must not cost the sweep its results
            log.warning("Old trials' checkpoints not removed: %s", e)
            return
        if files:
            log.info(
                "Removed %d checkpoint files (%.0f MB) of trials outside the best %d "
                "(hydra.sweeper.keep_checkpoints)",
                files,
                size / 2**20,
                self.keep_checkpoints,
            )

    def _run_batch(self, study: optuna.Study, batch: list, fixed: list[str], launched: int) -> int:
        folds = self.folds or 1
        overrides = []
        for trial in batch:
            trial.set_user_attr("host", studies.HOST)
            trial.set_user_attr("pid", os.getpid())
            ref = f"id:{trial._trial_id},number:{trial.number},study:{quote(study.study_name, in_dict=True)}"
            params = [*fixed, *(to_override(k, v) for k, v in trial.params.items())]
            if self.folds is None:
                overrides.append([*params, f"++optuna_trial={{{ref}}}"])
            else:  # a cross-validated trial: its folds, in trial_<n>/fold_<i>
                for fold in range(folds):
                    overrides.append(
                        [
                            *params,
                            f"data.split.fold={fold}",
                            f"++optuna_trial={{{ref},fold:{fold},folds:{folds}}}",
                            f"hydra.sweep.subdir='{self._fold_subdir(trial.number, fold)}'",
                        ]
                    )
            ACTIVE[trial._trial_id] = trial
        failures = 0
        n_objectives = len(study.directions)
        try:
            with studies.Heartbeat(study, [t._trial_id for t in batch]):
                try:
                    returns = self.launcher.launch(overrides, initial_job_idx=launched * folds)
                except Exception as e:  # e.g. a config group choice that does not exist
                    returns = [e] * len(overrides)
            for i, trial in enumerate(batch):
                state, reason, values = self._outcome(
                    trial, returns[i * folds : (i + 1) * folds], n_objectives
                )
                if reason and state == TrialState.FAIL:
                    trial.set_user_attr("fail_reason", reason)
                    failures += 1
                    log.warning("Trial %d failed: %s", trial.number, reason)
                if state == TrialState.COMPLETE:
                    study.tell(trial, values if n_objectives > 1 else values[0])
                else:
                    study.tell(trial, state=state)
                log.info(
                    "Trial %d %s%s",
                    trial.number,
                    state.name.lower(),
                    f": {reason}" if reason and state == TrialState.PRUNED else "",
                )
                if state == TrialState.COMPLETE and self.folds is not None:
                    self._summarize_folds(trial)
        finally:
            for trial in batch:
                ACTIVE.pop(trial._trial_id, None)
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()  # the next trial starts with the GPU's memory
            except Exception:
                pass
        return failures

    def _fold_subdir(self, number: int, fold: int) -> str:
        """``<the sweep's subdir>/fold_<i>``, or ``trial_<n>/fold_<i>`` where the subdir does
        not name the trial (``${hydra.job.num}`` differs per fold: the folds would scatter)."""
        from omegaconf import OmegaConf

        sub = OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get("subdir")
        sub = str(sub) if sub and "optuna_trial.number" in str(sub) else f"trial_{number}"
        return f"{sub}/fold_{fold}"

    def _outcome(self, trial, rets: list, n_objectives: int):
        """(state, reason, values) of a trial from its jobs' returns (one; or one per fold,
        whose values are averaged)."""
        states, values, run_dirs = [], [], []
        for fold, ret in enumerate(rets):
            where = f"fold {fold}: " if self.folds is not None else ""
            if isinstance(ret, Exception):
                states.append(
                    (TrialState.FAIL, f"{where}could not launch: {type(ret).__name__}: {ret}")
                )
                continue
            state, reason = job_failure(ret, n_objectives)
            states.append((state, f"{where}{reason}" if reason else None))
            out_dir = ret.hydra_cfg.hydra.runtime.output_dir if ret.hydra_cfg else None
            if out_dir:
                run_dirs.append(str(out_dir))
            if state == TrialState.COMPLETE:
                values.append(_values(ret.return_value, n_objectives))
        if run_dirs:  # a cross-validated trial's folder holds its folds' run folders
            run_dir = run_dirs[0] if self.folds is None else os.path.dirname(run_dirs[0])
            trial.set_user_attr("run_dir", run_dir)
        for wanted in (TrialState.FAIL, TrialState.PRUNED):
            for state, reason in states:
                if state == wanted:
                    return state, reason, None
        mean = [float(sum(v[k] for v in values) / len(values)) for k in range(n_objectives)]
        if self.folds is not None:
            trial.set_user_attr("fold_values", [v if n_objectives > 1 else v[0] for v in values])
        return TrialState.COMPLETE, None, mean

    def _summarize_folds(self, trial) -> None:
        from cxrlab.evaluation.cv import summarize

        run_dir = trial.user_attrs.get("run_dir") if hasattr(trial, "user_attrs") else None
        if not run_dir:
            return
        try:
            summarize(run_dir)
        except Exception as e:  # a summary must never cost the sweep its trial
            log.warning("Trial %d: cross-validation summary not written: %s", trial.number, e)
