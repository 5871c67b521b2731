"""Checkpoint files that a kill cannot leave half-written."""

from __future__ import annotations

import os
from pathlib import Path

import torch
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
