"""Pretrained weights fetched on first use through the libraries' own download code, from a real
HTTP server on 127.0.0.1 (``CXRLAB_WEIGHTS_MIRROR``), and what a run records of them. Nothing
here reaches the internet: the files are made by the test (untrained networks, one weight set
to a known value) and served from loopback."""

import hashlib
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from cxrlab.errors import UserError
from cxrlab.models import weights as W
from cxrlab.models.backbones import build_backbone

XRV = "densenet121-res224-all"


class Server:
    """A real HTTP server on 127.0.0.1 serving ``folder``; ``/truncated/<file>`` announces the
    whole file and sends half of it, then hangs up (a download cut off)."""

    def __init__(self, folder: Path):
        self.folder, self.requests = folder, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                truncated = self.path.startswith("/truncated/")
                f = outer.folder / Path(self.path).name
                if not f.is_file():
                    self.send_error(404)
                    return
                data = f.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if truncated else data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def home(monkeypatch, tmp_path):
    """Empty caches (torchxrayvision's under $HOME, torch.hub's under $TORCH_HOME), no offline
    switch, no retries' waiting."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(W.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(W, "RETRY_WAIT_S", 0.0)
    return tmp_path


@pytest.fixture
def server(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    s = Server(folder)
    yield s
    s.stop()


def xrv_weights(folder: Path) -> Path:
    """torchxrayvision's release format (a pickled module) with one known weight."""
    import torchxrayvision as xrv

    net = xrv.models.DenseNet(weights=None)
    with torch.no_grad():
        net.features.conv0.weight.fill_(0.125)
    path = folder / W.xrv_source(XRV).path.name
    torch.save(net, path)
    return path


def test_xrv_weights_are_fetched_once_verified_and_loaded(home, server, monkeypatch):
    served = xrv_weights(server.folder)
    monkeypatch.setenv(W.MIRROR_ENV, server.url)
    net, _, prov = build_backbone("densenet121_xrv", 2, pretrained="true")
    assert torch.all(net.features.conv0.weight == 0.125)  # the served parameters
    cached = W.xrv_source(XRV).path
    assert cached.is_file() and cached.read_bytes() == served.read_bytes()
    assert prov["pretrained"] and prov["name"] == XRV and prov["file"] == str(cached)
    assert prov["sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
    assert len(server.requests) == 1
    build_backbone("densenet121_xrv", 2, pretrained="auto")
    assert len(server.requests) == 1  # the second run downloads nothing


@pytest.mark.parametrize("fault", ["corrupt", "truncated"])
def test_a_bad_download_is_rejected_and_leaves_nothing(home, server, monkeypatch, fault, caplog):
    served = xrv_weights(server.folder)
    if fault == "corrupt":  # the right size, not a weights file (an error page, a bad disk)
        served.write_bytes(b"<html>" + bytes(served.stat().st_size - 6))
    monkeypatch.setenv(W.MIRROR_ENV, server.url + ("/truncated" if fault == "truncated" else ""))
    source = W.xrv_source(XRV)
    with pytest.raises(W.WeightsUnavailableError) as e:
        build_backbone("densenet121_xrv", 2, pretrained="true")
    assert source.url in str(e.value) and str(source.path) in str(e.value)
    assert not list(source.path.parent.glob("*"))  # no file, no .part: nothing counts as weights
    assert len(server.requests) == W.RETRIES
    net, _, prov = build_backbone("densenet121_xrv", 2, pretrained="auto")
    assert not prov["pretrained"] and "could not be had" in prov["reason"]
    assert "TRAINING FROM SCRATCH" in caplog.text


def test_torchvision_weights_go_through_torch_hub_with_its_hash_check(home, server, monkeypatch):
    import torchvision

    sd = torchvision.models.resnet18().state_dict()
    sd["conv1.weight"].fill_(0.5)
    made = server.folder / "made.pth"
    torch.save(sd, made)
    digest = hashlib.sha256(made.read_bytes()).hexdigest()
    monkeypatch.setenv(W.MIRROR_ENV, server.url)
    # the real resnet18 file name carries the real file's hash: this one does not match it
    (server.folder / W.torchvision_source(torchvision.models.ResNet18_Weights.DEFAULT).path.name
     ).write_bytes(made.read_bytes())  # fmt: skip
    with pytest.raises(W.WeightsUnavailableError, match="hash"):
        build_backbone("resnet18", 2, pretrained="true")
    assert not list((home / "torch" / "hub" / "checkpoints").glob("*"))
    # a file whose name carries its own hash prefix passes torch.hub's check and loads
    good = f"resnet18-{digest[:8]}.pth"
    made.rename(server.folder / good)
    src = W.WeightsSource("torchvision", "test", f"https://example.org/{good}",
                          home / "torch" / "hub" / "checkpoints" / good, digest[:8])  # fmt: skip
    path = W.fetch(src, set(sd))
    assert torch.load(path, weights_only=True)["conv1.weight"].eq(0.5).all()


def test_an_unreachable_server_fails_within_seconds(home, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(W.MIRROR_ENV, f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(W.WeightsUnavailableError, match="model.pretrained=false"):
        build_backbone("densenet121_xrv", 2, pretrained="true")
    assert time.monotonic() - start < 60  # a bound against hanging, not a speed claim


def test_offline_switch_never_touches_the_network(home, server, monkeypatch):
    xrv_weights(server.folder)
    monkeypatch.setenv(W.MIRROR_ENV, server.url)
    monkeypatch.setenv(W.OFFLINE_ENV, "1")
    _, _, prov = build_backbone("densenet121_xrv", 2, pretrained="auto")
    assert not prov["pretrained"] and W.OFFLINE_ENV in prov["reason"]
    assert server.requests == []


@pytest.mark.slow
def test_a_run_says_which_weights_it_started_from(home, server, monkeypatch, tmp_path):
    """train.py with fetched weights: the first screen, the checkpoint, test_metrics.json, the
    model card and the loggers' hyper-parameters name the file and its sha256."""
    import pandas as pd
    from conftest import train_here

    served = xrv_weights(server.folder)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    monkeypatch.setenv(W.MIRROR_ENV, server.url)
    proc = train_here(tmp_path, "model.pretrained=true", "data.source.num_patients=40",
                     "evaluation.bootstrap=10", "logger=csv")  # fmt: skip
    out = proc.stdout + proc.stderr
    first = out[: out.index("Selecting data")]
    assert f"Model densenet121_xrv starts from torchxrayvision weights {XRV}" in first
    run = tmp_path / "run"
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["cxrlab"]["pretrained"]["sha256"] == digest
    assert json.loads((run / "test_metrics.json").read_text())["pretrained"]["sha256"] == digest
    assert digest[:16] in (run / "report" / "model_card.md").read_text()
    hparams = (run / "csv" / "hparams.yaml").read_text()
    assert digest in hparams
    assert not pd.read_csv(run / "csv" / "metrics.csv").empty


def test_the_head_starts_from_torchxrayvisions_rows_for_the_findings_it_knows(
    home, server, monkeypatch
):
    """model.head=pretrained_findings: each of our findings that torchxrayvision's classifier
    has (matched by name) starts from that row; the others get new rows."""
    import torchxrayvision as xrv

    net = xrv.models.DenseNet(weights=None)
    with torch.no_grad():  # row j of the classifier: all j + 1, its bias -(j + 1)
        for j in range(net.classifier.out_features):
            net.classifier.weight[j].fill_(j + 1.0)
            net.classifier.bias[j] = -(j + 1.0)
    torch.save(net, server.folder / W.xrv_source(XRV).path.name)
    monkeypatch.setenv(W.MIRROR_ENV, server.url)
    classes = ["effusion", "no_such_finding", "pleural thickening"]
    model, _, prov = build_backbone("densenet121_xrv", 3, pretrained="true",
                                    class_names=classes, head="pretrained_findings")  # fmt: skip
    paths = list(xrv.datasets.default_pathologies)
    for i, name in ((0, "Effusion"), (2, "Pleural_Thickening")):
        j = paths.index(name)
        assert torch.all(model.head.weight[i] == j + 1.0) and model.head.bias[i] == -(j + 1.0)
    assert model.head.weight[1].abs().max() < 1.0  # a new row, initialized as usual
    assert prov["head_rows"] == {"effusion": "Effusion", "pleural thickening": "Pleural_Thickening"}
    with pytest.raises(UserError, match="model.head=pretrained_findings takes torchxrayvision"):
        build_backbone("resnet18", 3, pretrained="false", class_names=classes,
                       head="pretrained_findings")  # fmt: skip
