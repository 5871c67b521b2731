"""Grad-CAM on every backbone, and the pointing game's scoring."""

import numpy as np
import pytest
import torch

from cxrlab.inference.gradcam import GradCAM, overlay, pointing_hits
from cxrlab.models.backbones import BACKBONES
from cxrlab.models.module import CXRClassifier


def model(backbone, **kw):
    return CXRClassifier(
        backbone=backbone,
        class_names=["normal", "pneumonia"],
        class_counts=[1, 1],
        preprocess={"size": 64},
        pretrained=False,
        **kw,
    )


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_heatmaps_for_every_backbone(backbone):
    m = model(backbone)
    x = m.to_network_input(torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8))
    heat = GradCAM(m)(x, [0, 1])
    assert heat.shape == (2, 64, 64)
    assert heat.min() >= 0 and heat.max() <= 1 and np.isfinite(heat).all()
    assert m.training  # left as it was found
    # the stage before the last (twice the resolution)
    finer = GradCAM(m, "previous")
    assert finer.layer is not GradCAM(m).layer
    assert finer(x, [0, 1]).shape == (2, 64, 64)


def test_a_wrong_layer_is_named():
    with pytest.raises(ValueError, match="'features.99' is not a module of resnet18"):
        GradCAM(model("resnet18"), "features.99")


def test_opposite_classes_light_up_opposite_regions():
    """With a head whose two rows are opposite, Grad-CAM's channel weights are opposite, so
    the two classes' heatmaps cover complementary regions (ReLU(S) vs ReLU(-S)): where one
    peaks the other is dark."""
    torch.manual_seed(0)  # the weights are random: fix them (the property holds for any)
    m = model("resnet18", finetune={"policy": "head"})  # frozen trunk: grads still flow
    with torch.no_grad():
        m.net.head.weight[1] = -m.net.head.weight[0]
        m.net.head.bias.zero_()
    g = torch.Generator().manual_seed(0)
    x = m.to_network_input(torch.randint(0, 256, (1, 1, 128, 128), dtype=torch.uint8, generator=g))
    cam = GradCAM(m)
    h0, h1 = cam(x, 0)[0], cam(x, 1)[0]
    assert np.corrcoef(h0.ravel(), h1.ravel())[0, 1] < 0
    assert h1.flat[h0.argmax()] < 0.05 and h0.flat[h1.argmax()] < 0.05
    assert h0.max() == pytest.approx(1) and h1.max() == pytest.approx(1)


def test_overlay_and_pointing_game():
    gray = np.full((8, 8), 128, np.uint8)
    heat = np.zeros((8, 8))
    heat[2, 5] = 1.0
    rgb = overlay(gray, heat)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert not np.array_equal(rgb[2, 5], rgb[0, 0])  # the peak is coloured differently
    mask = np.zeros((8, 8), bool)
    mask[2, 5] = True
    far = np.zeros((8, 8), bool)
    far[6, 1] = True
    assert pointing_hits(np.stack([heat, heat]), np.stack([mask, far])).tolist() == [True, False]
    near = np.zeros((8, 8), bool)
    near[3, 6] = True
    assert pointing_hits(heat[None], near[None], tolerance=1).tolist() == [True]
