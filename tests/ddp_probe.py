"""Callbacks the DDP tests inject through Hydra: which rows each rank trained on, which blocks
changed."""

import json
from pathlib import Path

import pytorch_lightning as pl
import torch


class RecordTrainRows(pl.Callback):
    def __init__(self, out_dir: str):
        self.out = Path(out_dir)
        self.rows: list[int] = []
        self.labels: list[int] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.rows, self.labels = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rows.extend(int(i) for i in batch[2])
        self.labels.extend(int(y) for y in batch[1])

    def on_train_epoch_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        name = f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.json"
        (self.out / name).write_text(json.dumps(self.rows))
        (self.out / f"labels_{name}").write_text(json.dumps(self.labels))


def snapshot(blocks, head) -> list[list[torch.Tensor]]:
    """Copies of every block's parameters and buffers (BatchNorm statistics), then the head's."""
    return [
        [t.detach().clone() for m in b for t in [*m.parameters(), *m.buffers()]]
        for b in [*blocks, [head]]
    ]


def changed(before, after) -> list[bool]:
    """Per block of two snapshots: did anything in it change."""
    return [any(not torch.equal(a, b) for a, b in zip(xs, ys)) for xs, ys in zip(before, after)]


class RecordBlockChanges(pl.Callback):
    """Per rank and epoch: which of the backbone's five blocks changed (weights or BatchNorm
    statistics) and whether the head did."""

    def __init__(self, out_dir: str):
        self.out = Path(out_dir)

    def _state(self, pl_module):
        from cxrlab.models.backbones import BACKBONES
        from cxrlab.models.finetune import resolve_blocks

        blocks = resolve_blocks(pl_module.net, BACKBONES[pl_module.hparams.backbone].blocks)
        return snapshot(blocks, pl_module.net.head)

    def on_train_epoch_start(self, trainer, pl_module):
        self.before = self._state(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        name = f"blocks_rank{trainer.global_rank}_epoch{trainer.current_epoch}.json"
        (self.out / name).write_text(json.dumps(changed(self.before, self._state(pl_module))))
