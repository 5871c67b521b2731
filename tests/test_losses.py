import math

import pytest
import torch

from cxrlab.models.losses import FocalLoss, build_loss, class_weights_from_counts

LOGITS = torch.tensor([[2.0, 0.0], [0.5, 1.5]])
TARGET = torch.tensor([0, 1])


def softmax_row(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


P0 = softmax_row([2.0, 0.0])[0]  # p of the true class, sample 1
P1 = softmax_row([0.5, 1.5])[1]  # sample 2


def test_cross_entropy_by_hand():
    expected = -(math.log(P0) + math.log(P1)) / 2
    assert build_loss("ce", [1, 1])(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_cross_entropy_by_hand():
    counts = [30, 10]  # weights: 40 / (2 * 30) = 2/3 and 40 / (2 * 10) = 2
    w = class_weights_from_counts(counts)
    assert w.tolist() == pytest.approx([2 / 3, 2.0])
    expected = (-(2 / 3) * math.log(P0) - 2 * math.log(P1)) / (2 / 3 + 2)  # torch's weighted mean
    assert build_loss("weighted_ce", counts)(LOGITS, TARGET).item() == pytest.approx(expected)


def test_focal_by_hand():
    g = 2.0
    expected = (-((1 - P0) ** g) * math.log(P0) - ((1 - P1) ** g) * math.log(P1)) / 2
    assert FocalLoss(gamma=g)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)
    alpha = [0.25, 0.75]
    expected_a = (-0.25 * (1 - P0) ** g * math.log(P0) - 0.75 * (1 - P1) ** g * math.log(P1)) / 2
    assert FocalLoss(gamma=g, alpha=alpha)(LOGITS, TARGET).item() == pytest.approx(expected_a)


def test_focal_with_gamma_zero_is_cross_entropy():
    logits = torch.randn(16, 3)
    y = torch.randint(0, 3, (16,))
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert FocalLoss(gamma=0)(logits, y).item() == pytest.approx(ce.item(), rel=1e-5)


def test_label_smoothing_by_hand():
    eps = 0.1
    lp0 = [math.log(v) for v in softmax_row([2.0, 0.0])]
    lp1 = [math.log(v) for v in softmax_row([0.5, 1.5])]
    t0, t1 = [1 - eps + eps / 2, eps / 2], [eps / 2, 1 - eps + eps / 2]
    expected = -(sum(a * b for a, b in zip(t0, lp0)) + sum(a * b for a, b in zip(t1, lp1))) / 2
    got = build_loss("ce", [1, 1], label_smoothing=eps)(LOGITS, TARGET).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_unknown_loss_names_the_key():
    with pytest.raises(ValueError, match="model.loss.name='hinge'.*focal"):
        build_loss("hinge", [1, 1])


def test_multilabel_loss_leaves_unknown_labels_out_and_weights_positives():
    import math

    from cxrlab.models.losses import MaskedMultilabelLoss, positive_weights

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    target = torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, float("nan")]])
    bce = MaskedMultilabelLoss()(logits, target)
    known = [(2.0, 1), (0.5, 0), (0.0, 0), (3.0, 1)]
    want = sum(math.log1p(math.exp(-x)) if y else math.log1p(math.exp(x)) for x, y in known) / 4
    assert bce.item() == pytest.approx(want, rel=1e-6)
    # focal: the confident right answers weigh less than in BCE
    assert MaskedMultilabelLoss(gamma=2.0)(logits, target).item() < bce.item()
    w = positive_weights([10, 5, 1], [90, 95, 99])
    assert w.tolist() == pytest.approx([9.0, 19.0, 99.0])
    weighted = MaskedMultilabelLoss(pos_weight=w)(logits, target)
    assert weighted.item() > bce.item()  # the positives (findings 0 and 1) count more
    with pytest.raises(ValueError, match="every finding needs positive"):
        positive_weights([3, 0], [7, 10])
