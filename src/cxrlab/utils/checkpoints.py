"""Checkpoint files that a kill cannot leave half-written."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from pytorch_lightning import callbacks as pl_callbacks
from pytorch_lightning.plugins.io import TorchCheckpointIO


def atomic_torch_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    A process killed while writing (SIGKILL, OOM killer, a preempted node) leaves the previous
    file intact and at most a hidden ``.tmp`` file, never a truncated checkpoint that a resume
    would fail on.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer with ``atomic_torch_save`` for local paths (remote URLs
    keep Lightning's own writer)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


class ModelCheckpoint(pl_callbacks.ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is written at the end of every epoch.

    Lightning 2.x writes ``last.ckpt`` (``save_last=True``) only when this callback saves a
    top-k checkpoint, i.e. when the monitored metric improved: a run killed after three epochs
    without improvement resumed from before them. One callback (rather than a second one for
    ``last.ckpt``) keeps the loggers' ``log_model`` uploading both best and last.
    """

    def on_validation_end(self, trainer, pl_module) -> None:
        skip = self._should_skip_saving_checkpoint(trainer)
        super().on_validation_end(trainer, pl_module)
        if not skip and not self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        skip = self._should_skip_saving_checkpoint(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        if not skip and self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_epoch(trainer)

    def _save_last_every_epoch(self, trainer) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
