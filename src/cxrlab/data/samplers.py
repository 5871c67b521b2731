"""Class-balanced sampling with replacement that also shards correctly under DDP."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DistributedSampler


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights 1 / (count of its class): every class is drawn equally often."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    per_class = dict(zip(classes.tolist(), (1.0 / counts).tolist()))
    return np.array([per_class[y] for y in labels.tolist()], dtype=np.float64)


class DistributedWeightedSampler(DistributedSampler):
    """``WeightedRandomSampler`` (with replacement) split into disjoint per-rank shards.

    Every rank draws the same ``num_samples`` indices from the same generator, seeded with
    ``seed + epoch`` (``set_epoch``, which Lightning calls), and keeps every
    ``num_replicas``-th one starting at its rank: together the ranks see one class-balanced
    epoch, each a distinct part of it, and a new one each epoch. With one process it is a
    seeded ``WeightedRandomSampler``. A ``DistributedSampler`` subclass, so Lightning uses it
    as it is instead of wrapping it in another distributed sampler.
    """

    def __init__(
        self,
        weights,
        num_samples: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ):
        weights = torch.as_tensor(np.asarray(weights), dtype=torch.double)
        if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("sampler weights must be a non-empty 1-D array of non-negative values")
        if num_replicas is None or rank is None:
            ready = torch.distributed.is_available() and torch.distributed.is_initialized()
            num_replicas = torch.distributed.get_world_size() if ready else 1
            rank = torch.distributed.get_rank() if ready else 0
        self.weights = weights
        self.total = int(num_samples or len(weights))
        if self.total < 1:
            raise ValueError(f"data.epoch_size={num_samples}: must be >= 1")
        # no DistributedSampler.__init__: it wants a dataset; set what its methods use
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = math.ceil(self.total / num_replicas)

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        n = self.num_samples * self.num_replicas  # every rank gets the same number of batches
        idx = torch.multinomial(self.weights, n, replacement=True, generator=g)
        return iter(idx[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
