import pytest
import torch

from cxrlab.models.backbones import BACKBONES, build_backbone, weights_source
from cxrlab.models.weights import WeightsUnavailableError


def xrv_weights_file(name):
    return weights_source("densenet121_xrv", name).path


def torchvision_weights_file(wenum):
    return weights_source("resnet18", wenum.name).path


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_forward_at_a_tiny_size(name):
    net, spec, _ = build_backbone(name, num_classes=3, dropout=0.1, pretrained="false")
    x = spec.normalize(torch.rand(2, 1, 64, 64))
    assert x.shape[1] == spec.channels
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3)


def test_input_specs_match_what_the_weights_were_trained_with():
    _, xrv_spec, _ = build_backbone("densenet121_xrv", 2, pretrained="false")
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    assert xrv_spec.normalize(x).flatten().tolist() == [-1024.0, 0.0, 1024.0]
    _, inet, _ = build_backbone("resnet18", 2, pretrained="false")
    y = inet.normalize(torch.full((1, 1, 2, 2), 0.485))
    assert y.shape == (1, 3, 2, 2) and y[0, 0].abs().max() < 1e-6


def test_xrv_wrapper_keeps_the_resolution_and_own_head():
    # xrv's own forward would resize to 224 and apply op thresholds to 18 outputs
    net, spec, _ = build_backbone("densenet121_xrv", 2, pretrained="false")
    feats = net.forward_features(spec.normalize(torch.rand(1, 1, 64, 64)))
    assert feats.shape[-1] == 2  # 64 / 32: no resize to 224
    assert net.head.out_features == 2


def test_pretrained_true_without_the_file_names_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as e:
        build_backbone("densenet121_xrv", 2, pretrained="true")
    assert str(xrv_weights_file("densenet121-res224-all")) in str(e.value)
    assert "wget" in str(e.value)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsUnavailableError, match="resnet18"):
        build_backbone("resnet18", 2, pretrained="true")


def test_pretrained_auto_without_the_file_trains_from_scratch_loudly(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("HOME", str(tmp_path))
    net, _, _ = build_backbone("densenet121_xrv", 2, pretrained="auto")
    assert "FROM SCRATCH" in caplog.text
    assert isinstance(net, torch.nn.Module)


def test_xrv_weights_in_the_cache_folder_are_loaded(monkeypatch, tmp_path):
    """The real loading path: a weights file where torchxrayvision looks for it."""
    import torchxrayvision as xrv

    monkeypatch.setenv("HOME", str(tmp_path))
    path = xrv_weights_file("densenet121-res224-all")
    path.parent.mkdir(parents=True)
    source = xrv.models.DenseNet(weights=None)
    with torch.no_grad():
        source.features.conv0.weight.fill_(0.125)
    torch.save(source, path)  # xrv's release files are pickled modules
    net, _, _ = build_backbone("densenet121_xrv", 2, pretrained="true")
    assert torch.all(net.features.conv0.weight == 0.125)


def test_torchvision_weights_in_the_hub_cache_are_loaded(monkeypatch, tmp_path):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    wenum = torchvision.models.ResNet18_Weights.DEFAULT
    path = torchvision_weights_file(wenum)
    path.parent.mkdir(parents=True)
    sd = torchvision.models.resnet18().state_dict()
    sd["conv1.weight"].fill_(0.5)
    torch.save(sd, path)
    monkeypatch.setattr(torch.hub, "_get_torch_home", lambda: str(tmp_path))
    net, _, _ = build_backbone("resnet18", 2, pretrained="auto")
    assert torch.all(net.features[0].weight == 0.5)


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="model.backbone='vgg11' is not allowed.*resnet18"):
        build_backbone("vgg11", 2)
