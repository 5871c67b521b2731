"""Grad-CAM and its variants on every backbone (checked against pytorch-grad-cam), and the
pointing game's scoring."""

import numpy as np
import pytest
import torch

from cxrlab.inference.gradcam import METHODS, GradCAM, gradcam_layer, overlay, pointing_hits
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
    # every stage by output stride: its activation map really has that stride
    assert gradcam_layer(backbone, "last") == gradcam_layer(backbone, "stride32")
    assert gradcam_layer(backbone, "previous") == gradcam_layer(backbone, "stride16")
    sizes = {}
    for stride in (8, 16, 32):
        cam = GradCAM(m, f"stride{stride}")
        handle = cam.layer.register_forward_hook(
            lambda mod, i, o, s=stride: sizes.__setitem__(s, o.shape[-1])
        )
        assert cam(x, [0, 1]).shape == (2, 64, 64)
        handle.remove()
    assert sizes == {8: 8, 16: 4, 32: 2}


def test_wrong_layers_and_methods_are_named():
    with pytest.raises(ValueError, match="'features.99' is not a module of resnet18"):
        GradCAM(model("resnet18"), "features.99")
    with pytest.raises(ValueError, match="stride4.*stride8, stride16, stride32"):
        GradCAM(model("resnet18"), "stride4")
    with pytest.raises(
        ValueError, match=r"'gradcam\+' is not known: use one of gradcam, gradcam\+\+, hirescam"
    ):
        GradCAM(model("resnet18"), method="gradcam+")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layer", ["stride32", "stride8"])
def test_methods_match_pytorch_grad_cam(method, layer):
    """The reference implementation of each method (pytorch-grad-cam) on the same model, layer
    and input: the same maps, up to where the rescaling to [0, 1] happens (the reference scales
    before upsampling, cxrlab after)."""
    import pytorch_grad_cam as ref
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    reference = {
        "gradcam": ref.GradCAM,
        "gradcam++": ref.GradCAMPlusPlus,
        "hirescam": ref.HiResCAM,
        "layercam": ref.LayerCAM,
    }[method]
    torch.manual_seed(0)
    m = model("resnet18").eval()
    g = torch.Generator().manual_seed(1)
    x = m.to_network_input(torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8, generator=g))
    ours = GradCAM(m, layer, method)(x, [1, 0, 1])
    with reference(
        model=m.net, target_layers=[m.net.get_submodule(gradcam_layer("resnet18", layer))]
    ) as cam:
        theirs = cam(x, targets=[ClassifierOutputTarget(c) for c in (1, 0, 1)])
    for a, b in zip(ours, theirs):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
        assert np.abs(a - b).max() < 0.1


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
    cam = GradCAM(m, "last", "gradcam")  # the property is classic Grad-CAM's
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


def test_the_predictor_checks_its_cam_settings_at_start():
    from cxrlab.inference.predictor import Predictor

    m = model("resnet18")
    with pytest.raises(ValueError, match="stride4"):
        Predictor(m, "cpu", gradcam_layer="stride4")
    with pytest.raises(ValueError, match=r"'gradcam\+' is not known"):
        Predictor(m, "cpu", gradcam_method="gradcam+")
    p = Predictor(m, "cpu", gradcam_layer="previous", gradcam_method="hirescam")
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64), dtype=np.uint8)
    heat = p.gradcam(x, ["normal", "pneumonia"])
    assert heat.shape == (2, 64, 64) and heat.max() == pytest.approx(1)
