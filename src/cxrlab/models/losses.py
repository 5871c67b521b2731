"""Classification losses: cross-entropy, class-weighted cross-entropy, focal; label smoothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrlab.errors import ConfigError, check_choice


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


def _ce(counts, label_smoothing: float = 0.0, **_) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def _weighted_ce(counts, label_smoothing: float = 0.0, **_) -> nn.Module:
    return nn.CrossEntropyLoss(
        weight=class_weights_from_counts(counts), label_smoothing=label_smoothing
    )


def _focal(counts, label_smoothing: float = 0.0, gamma: float = 2.0, alpha=None) -> nn.Module:
    if alpha == "balanced":
        alpha = class_weights_from_counts(counts).tolist()
    if alpha is not None and len(alpha) != len(counts):
        raise ConfigError(f"model.loss.alpha has {len(alpha)} values for {len(counts)} classes")
    return FocalLoss(gamma=gamma, alpha=alpha, label_smoothing=label_smoothing)


# model.loss.name -> its builder (training class counts, the node's other keys)
LOSSES = {"ce": _ce, "weighted_ce": _weighted_ce, "focal": _focal}


def _multilabel_only(counts, **_) -> nn.Module:
    raise ConfigError(
        "model.loss.name=bce / weighted_bce is for data.task=multilabel; use ce, weighted_ce or "
        "focal"
    )


LOSSES.update(bce=_multilabel_only, weighted_bce=_multilabel_only)


def check_loss(loss: Mapping) -> None:
    """The rules of ``model.loss.*`` (the class counts come later, with the data)."""
    check_choice(loss.get("name", "ce"), LOSSES, "model.loss.name")
    alpha = loss.get("alpha")
    if isinstance(alpha, str) and alpha != "balanced":
        raise ConfigError(f"model.loss.alpha={alpha!r}: use a list, 'balanced' or null")
    if not 0 <= float(loss.get("label_smoothing", 0.0)) < 1:
        raise ConfigError(
            f"model.loss.label_smoothing={loss['label_smoothing']}: use a value in [0, 1)"
        )


def build_loss(
    name: str,
    class_counts: Sequence[int],
    label_smoothing: float = 0.0,
    gamma: float = 2.0,
    alpha: Sequence[float] | str | None = None,
) -> nn.Module:
    """``alpha`` for focal: a list, ``"balanced"`` (weights from training counts) or None."""
    check_loss({"name": name, "alpha": alpha, "label_smoothing": label_smoothing})
    return LOSSES[name](class_counts, label_smoothing=label_smoothing, gamma=gamma, alpha=alpha)


# ------------------------------------------------------------------ multi-label (data.task=multilabel)
def positive_weights(positives: Sequence[float], negatives: Sequence[float]) -> torch.Tensor:
    """Per-finding BCE ``pos_weight`` = negatives / positives of the training split (labelled
    images only), as torch's BCEWithLogitsLoss documents it."""
    pos = torch.as_tensor(positives, dtype=torch.float32)
    neg = torch.as_tensor(negatives, dtype=torch.float32)
    if (pos <= 0).any():
        raise ValueError(
            f"every finding needs positive training images for weighted loss, counts={pos.tolist()}"
        )
    return neg / pos


class MaskedMultilabelLoss(nn.Module):
    """Sigmoid BCE (``gamma=0``) or sigmoid focal loss (Lin et al. 2017) per finding, with the
    unknown labels (NaN targets) left out, as torchxrayvision leaves out NaN labels: the mean
    over known (image, finding) pairs. ``pos_weight`` weighs each finding's positives."""

    def __init__(self, gamma: float = 0.0, pos_weight: Sequence[float] | None = None):
        super().__init__()
        self.gamma = float(gamma)
        weight = None if pos_weight is None else torch.as_tensor(pos_weight).float()
        self.register_buffer("pos_weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(target)
        y = torch.nan_to_num(target.float())
        x = logits.float()
        loss = F.binary_cross_entropy_with_logits(
            x, y, pos_weight=self.pos_weight, reduction="none"
        )
        if self.gamma:
            p = torch.sigmoid(x)
            p_t = p * y + (1 - p) * (1 - y)
            loss = loss * (1 - p_t) ** self.gamma
        n = known.sum()
        return (loss * known).sum() / n.clamp_min(1)


def build_multilabel_loss(
    name: str,
    positives: Sequence[int],
    negatives: Sequence[int] | None,
    gamma: float = 2.0,
    **_,
) -> nn.Module:
    """data.task=multilabel: ``ce``/``bce`` sigmoid BCE, ``weighted_ce``/``weighted_bce`` with
    per-finding positive weights from the training counts, ``focal`` sigmoid focal loss."""
    check_choice(name, MULTILABEL_LOSSES, "model.loss.name")
    if name in ("weighted_ce", "weighted_bce"):
        if negatives is None:
            raise ConfigError("model.loss.name=weighted_bce needs the training split's counts")
        return MaskedMultilabelLoss(pos_weight=positive_weights(positives, negatives).tolist())
    return MaskedMultilabelLoss(gamma=gamma if name == "focal" else 0.0)


MULTILABEL_LOSSES = ("bce", "weighted_bce", "focal", "ce", "weighted_ce")
