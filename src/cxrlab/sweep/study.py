"""Optuna storage and study bookkeeping: persistence, killed-trial recovery, trial counting."""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

log = logging.getLogger(__name__)

# trials that count towards n_trials; failed ones do not (they are retried or replaced)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)
HOST = socket.gethostname()


def mask(url: str | None) -> str:
    """A storage URL fit for logs (password hidden)."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url) if url else "in-memory"


def retry_once(max_retry: int = 1):
    """A heartbeat-stale-trial callback that queues a dead trial's parameters to run again.

    Instead of Optuna's ``RetryFailedTrialCallback`` (deprecated, removed in Optuna 6) and its
    successor ``RetryHeartbeatStaleTrialCallback``, which copy every user attribute. The
    retry carries ``retry_of`` (the dead trial's number) and ``retry_count``, none of the dead
    trial's other attributes (its ``fail_reason`` stays on the trial that failed).
    """

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        count = int(trial.user_attrs.get("retry_count", 0))
        if count >= max_retry:
            return
        study.enqueue_trial(
            dict(trial.params),
            user_attrs={"retry_of": trial.number, "retry_count": count + 1},
        )

    return callback


def open_storage(url: str | None, heartbeat_interval: int | None = 30, max_retry: int = 1):
    """An RDB storage for ``url`` (SQLite, PostgreSQL, MySQL), or None for in-memory.

    With a heartbeat, a trial whose process died (SIGKILL, OOM killer, lost node) is marked
    failed after ``2 * heartbeat_interval`` seconds by whichever worker looks next, and its
    parameters are queued again once (``max_retry``).
    """
    if not url:
        return None
    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        # several processes may share one SQLite file: wait for the lock instead of failing
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    kwargs = {}
    if heartbeat_interval:
        kwargs = {
            "heartbeat_interval": int(heartbeat_interval),
            "grace_period": 2 * int(heartbeat_interval),
            "heartbeat_stale_trial_callback": retry_once(max_retry),
        }
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except Exception as e:
            # workers starting together on an empty database race to create optuna's tables
            # (PostgreSQL: "duplicate key ... pg_type"); the loser finds them made a moment later
            if attempt == 5 or type(e).__name__ not in ("IntegrityError", "OperationalError"):
                raise
            log.info("Storage not ready (%s); retrying", type(e).__name__)
            time.sleep(0.5 + random.random() * 2)
    raise AssertionError("unreachable")


def recover_killed_trials(study: optuna.Study, max_retry: int = 1) -> list[int]:
    """Fail the RUNNING trials that this host's dead sweep processes left behind.

    Immediate for this machine (the trial records host and pid); trials of other machines
    are left to the heartbeat (``fail_stale_trials``).
    """
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
        if host != HOST or pid is None or _alive(int(pid)):
            continue
        study._storage.set_trial_user_attr(
            t._trial_id, "fail_reason", "its sweep process ended without reporting (killed?)"
        )
        if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
            retry_once(max_retry)(study, study._storage.get_trial(t._trial_id))
            recovered.append(t.number)
    if recovered:
        log.warning(
            "Trials %s were left running by a sweep process that died: marked failed, their "
            "parameters queued to run again",
            recovered,
        )
    return recovered


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_stale(study: optuna.Study) -> None:
    storage = study._storage
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is not None:
        optuna.storages.fail_stale_trials(study)


def counts(study: optuna.Study) -> dict[str, int]:
    out = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name.lower()] += 1
    return out


def is_enqueued(trial: optuna.trial.Trial) -> bool:
    """Parameters fixed before asking (``hydra.sweeper.enqueue``, a killed trial's retry)."""
    return "fixed_params" in trial.study._storage.get_trial_system_attrs(trial._trial_id)


def same_params_as(study: optuna.Study, trial: optuna.trial.Trial) -> int | None:
    """The number of an earlier trial that tried exactly ``trial``'s parameters, or None.

    Trials skipped as duplicates themselves do not count; a retry of a killed trial is
    enqueued and never checked (it repeats its parameters on purpose, once).
    """
    for t in study.get_trials(deepcopy=False):
        if t.number == trial.number or "duplicate_of" in t.user_attrs:
            continue
        if t.state == TrialState.WAITING:
            continue
        if t.params == trial.params:
            return t.number
    return None


def room_left(study: optuna.Study, n_trials: int) -> int:
    """How many more trials to start: ``n_trials`` is the study's total, across runs."""
    busy = study.get_trials(deepcopy=False, states=(*COUNTED, TrialState.RUNNING))
    return n_trials - len(busy)


def is_surplus(study: optuna.Study, trial: optuna.trial.Trial, n_trials: int) -> bool:
    """Two workers that looked at the same moment may both have asked for the last trial:
    the one with the higher number gives way (so a study never exceeds ``n_trials``)."""
    ahead = [
        t
        for t in study.get_trials(deepcopy=False, states=(*COUNTED, TrialState.RUNNING))
        if t.number < trial.number
    ]
    return len(ahead) >= n_trials


class Heartbeat:
    """Records the storage heartbeat of running trials from a background thread."""

    def __init__(self, study: optuna.Study, trial_ids: list[int]):
        self.storage = study._storage
        self.interval = getattr(self.storage, "get_heartbeat_interval", lambda: None)()
        self.trial_ids = trial_ids
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.interval:
            self._beat()
            self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _beat(self):
        for tid in self.trial_ids:
            self.storage.record_heartbeat(tid)

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except Exception as e:  # a database hiccup must not kill the training run
                log.warning("Optuna heartbeat failed: %s", e)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        return False


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def remove_checkpoints(study: optuna.Study, keep: int) -> tuple[int, int]:
    """Delete the ``*.ckpt`` files of finished trials outside the ``keep`` best complete ones.

    A trial's checkpoints (weights and optimizer state, 100+ MB for a DenseNet with Adam) are
    used by the trial itself (its test split is scored with its best checkpoint) and afterwards
    only by someone who wants that model: the best trials. A pruned or failed trial is never
    resumed (a killed one is retried from the start), and a complete trial's rank can only
    fall as trials finish, so what is removed is never wanted back. Running trials, and run
    folders that are not on this machine (another worker's), are left alone; only files
    ending in ``.ckpt`` inside a trial's own run folder are touched. Returns (files, bytes).
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(study.directions) > 1:
        # no one best: every trial of the Pareto front keeps its checkpoints (at least
        # ``keep``, the front's earliest trials first, when the front is smaller)
        front = sorted(study.best_trials, key=lambda t: t.number)
        rest = [t for t in complete if t.number not in {f.number for f in front}]
        kept = {t.number for t in front} | {t.number for t in rest[: max(0, keep - len(front))]}
    else:
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        ranked = sorted(complete, key=lambda t: (-t.value if maximize else t.value, t.number))
        kept = {t.number for t in ranked[:keep]}
    files, size = 0, 0
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        run_dir = t.user_attrs.get("run_dir")
        if t.number in kept or not run_dir or not Path(run_dir).is_dir():
            continue
        for path in Path(run_dir).rglob("*.ckpt"):
            try:
                n = path.stat().st_size
                path.unlink()
            except FileNotFoundError:  # another worker sharing the folder was first
                continue
            files, size = files + 1, size + n
    return files, size
