"""A callback the DDP test injects through Hydra: records which rows each rank trained on."""

import json
from pathlib import Path

import pytorch_lightning as pl


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
