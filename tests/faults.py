"""Real faults at known points, for runs started as subprocesses (``PYTHONPATH=tests``)."""

import os
import signal

from pytorch_lightning.callbacks import Callback


class KillAt(Callback):
    """SIGKILL this process when training reaches ``batch`` of ``epoch`` (0-based): no
    handler, no cleanup, as the OOM killer or a preempted node would end it."""

    def __init__(self, epoch: int, batch: int = 0):
        self.epoch, self.batch = int(epoch), int(batch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
