"""cxrlab's checkpoints, the one room for them: written so a kill cannot leave half a file,
``last.ckpt`` every epoch, read back with a clear error for anything that is not one, the
model loaded from them (eval.py, predict.py, serve.py, export.py), and the ``cxrlab`` section
(threshold, evaluation settings, pretrained weights) updated in place.

A checkpoint carries its own input contract: backbone, classes, preprocessing, input spec
(``hyper_parameters``), the data selection (``datamodule_hyper_parameters``) and the ``cxrlab``
section, so nothing else is needed to use it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from pytorch_lightning import callbacks as pl_callbacks
from pytorch_lightning.plugins.io import TorchCheckpointIO

from cxrlab.errors import UserError

if TYPE_CHECKING:
    from cxrlab.models.module import CXRClassifier

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    pass


def read_checkpoint(path: str | Path, name: str = "ckpt_path") -> dict:
    """Load a cxrlab checkpoint's dictionary (tensors and plain types only) or say why not.

    ``name``: how the user gave the path (``ckpt_path`` for eval.py, ``--ckpt`` for predict.py
    and serve.py), so the message names what they typed.
    """
    p = Path(path)
    sep = " " if name.startswith("-") else "="
    where = f"{name}{sep}{path}"
    if not p.is_file():
        raise CheckpointError(f"{where}: no such file (a checkpoint written by train.py, e.g. "
                              "logs/train/runs/<run>/checkpoints/best.ckpt)")  # fmt: skip
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{where}: not a readable PyTorch checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "cxrlab" not in ckpt:
        raise CheckpointError(
            f"{where}: not a cxrlab checkpoint (no hyper-parameters "
            "or cxrlab section); train one with train.py"
        )
    hp = ckpt["hyper_parameters"]
    if "class_names" not in hp or "backbone" not in hp:
        raise CheckpointError(f"{where}: a checkpoint of another task (no class names)")
    return ckpt


def load_model(path: str | Path, name: str = "ckpt_path") -> CXRClassifier:
    """The trained model of a checkpoint, on the CPU, with its threshold and settings."""
    from cxrlab.models.module import CXRClassifier

    read_checkpoint(path, name)
    # pretrained=false, no init_from: the checkpoint holds every weight; look for no other file
    return CXRClassifier.load_from_checkpoint(
        str(path), map_location="cpu", pretrained="false", init_from=None, weights_only=True
    )


def update_checkpoint(path: str | Path, extra: dict) -> None:
    """Add ``extra`` to a checkpoint file's ``cxrlab`` section (atomically)."""
    state = torch.load(str(path), map_location="cpu", weights_only=False)
    state["cxrlab"] = {**state.get("cxrlab", {}), **extra}
    atomic_torch_save(state, path)


def resume_point(ckpt_path: str | None) -> tuple[int, int] | None:
    """(epoch, global step) that a resumed run starts after, or None for a fresh run."""
    if not ckpt_path:
        return None
    state = torch.load(str(ckpt_path), map_location="cpu", weights_only=False, mmap=True)
    epoch, step = int(state.get("epoch", -1)), int(state.get("global_step", 0))
    log.info("Resuming from %s (after epoch %d, step %d)", ckpt_path, epoch, step)
    return epoch, step


def atomic_torch_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    A process killed while writing (SIGKILL, OOM killer, a preempted node) leaves the previous
    file intact and at most a hidden ``.tmp`` file, never a truncated checkpoint that a resume
    would fail on. The file is flushed to the disk (fsync) before the rename, so a machine
    that crashes or loses power keeps a whole checkpoint too. ``CXRLAB_FSYNC=0`` leaves that to
    the kernel, as PostgreSQL's ``fsync=off`` does, for scratch runs on a throwaway disk (the
    test suite sets it: a process kill loses nothing that was written, and fsync of a 130 MB
    checkpoint costs a quarter of a second here).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            if os.environ.get("CXRLAB_FSYNC", "1") != "0":
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
