"""Classification losses: cross-entropy, class-weighted cross-entropy, focal; label smoothing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "weighted_ce", "focal")


def class_weights_from_counts(counts: Sequence[int]) -> torch.Tensor:
    """Inverse-frequency weights, scaled so that a balanced dataset gets all ones."""
    c = torch.as_tensor(counts, dtype=torch.float32)
    if (c <= 0).any():
        raise ValueError(
            f"every class needs training images for weighted loss, counts={list(counts)}"
        )
    return c.sum() / (len(c) * c)


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017): mean of -alpha_y (1 - p_y)^gamma log p_y.

    ``alpha`` is a per-class weight vector (or None). With gamma=0 and no alpha this is CE.
    """

    def __init__(
        self, gamma: float = 2.0, alpha: Sequence[float] | None = None, label_smoothing: float = 0.0
    ):
        super().__init__()
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("alpha", None if alpha is None else torch.as_tensor(alpha).float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        k = logits.shape[1]
        onehot = F.one_hot(target, k).float()
        if self.label_smoothing:
            onehot = onehot * (1 - self.label_smoothing) + self.label_smoothing / k
        p = logp.exp()
        loss = -(onehot * (1 - p) ** self.gamma * logp).sum(1)
        if self.alpha is not None:
            loss = loss * self.alpha[target]
        return loss.mean()


def build_loss(
    name: str,
    class_counts: Sequence[int],
    label_smoothing: float = 0.0,
    gamma: float = 2.0,
    alpha: Sequence[float] | str | None = None,
) -> nn.Module:
    """``alpha`` for focal: a list, ``"balanced"`` (weights from training counts) or None."""
    if name not in LOSSES:
        raise ValueError(f"model.loss.name={name!r} is not known: use one of {list(LOSSES)}")
    if name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if name == "weighted_ce":
        return nn.CrossEntropyLoss(
            weight=class_weights_from_counts(class_counts), label_smoothing=label_smoothing
        )
    if isinstance(alpha, str):
        if alpha != "balanced":
            raise ValueError(f"model.loss.alpha={alpha!r}: use a list, 'balanced' or null")
        alpha = class_weights_from_counts(class_counts).tolist()
    if alpha is not None and len(alpha) != len(class_counts):
        raise ValueError(
            f"model.loss.alpha has {len(alpha)} values for {len(class_counts)} classes"
        )
    return FocalLoss(gamma=gamma, alpha=alpha, label_smoothing=label_smoothing)
