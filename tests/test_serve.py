"""serve.py: a real uvicorn server on 127.0.0.1, talked to over HTTP, fuzzed by schemathesis."""

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, free_port, run_process, start_process, train_here

from cxrlab.inference.predictor import Predictor
from cxrlab.inference.service import wait_until_healthy

# every test here trains, serves or sweeps: the inner loop (pytest -m "not slow") skips it
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_phantom):
    tmp = tmp_path_factory.mktemp("serve")
    train_here(tmp, "trainer.max_epochs=1", "evaluation.bootstrap=20")
    ckpt = tmp / "run" / "checkpoints" / "best.ckpt"
    port = free_port()
    cmd = [
        sys.executable,
        str(ROOT / "serve.py"),
        "--ckpt",
        str(ckpt),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--max-upload-mb",
        "1",
        "--max-batch",
        "4",
    ]
    proc = start_process(cmd, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, timeout=120)
    except RuntimeError as e:
        proc.kill()
        raise AssertionError("\n".join(proc.communicate(30))) from e
    images = sorted((tiny_phantom / "chest_xray" / "test").rglob("*.jpeg"))[:6]
    yield url, ckpt, images, tmp
    proc.terminate()
    proc.wait(30)


def post(url, path, name="x.jpeg", ctype="image/jpeg", data=None):
    data = data if data is not None else Path(path).read_bytes()
    return httpx.post(f"{url}/predict", files={"file": (name, data, ctype)}, timeout=60)


def test_health_and_metadata(served):
    url, ckpt, _, _ = served
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    meta = httpx.get(f"{url}/metadata").json()
    assert meta["classes"] == ["normal", "pneumonia"]
    assert meta["model"] == "densenet121_xrv"
    assert meta["input_spec"]["normalization"] == "xrv"
    assert meta["threshold"] is not None and meta["checkpoint"] == str(ckpt)
    # the default CAM: Grad-CAM++ on the stride-8 stage (docs/serving.md says why)
    assert meta["gradcam"] == {"layer": "features.denseblock2", "method": "gradcam++"}


def test_docs_page_needs_no_internet(served):
    """/docs loads Swagger UI from the service itself (offline hospital networks): every
    script and stylesheet it names is a path on this server, and each one is served."""
    import re

    url, *_ = served
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{url}{page}").text
        assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
        assert assets and all(a.startswith("/") for a in assets), assets
        assert "cdn" not in html.lower()
        for a in assets:
            r = httpx.get(f"{url}{a}")
            assert r.status_code == 200 and len(r.content) > 10_000, a


def test_predict_equals_the_predictor_on_the_same_file(served):
    url, ckpt, images, _ = served
    expected = Predictor.from_checkpoint(ckpt, "cpu").predict_files(images[:2], progress=False)
    for img, (_, row) in zip(images[:2], expected.iterrows()):
        r = post(url, img, name=img.name)
        timing = dict(t.strip().split(";dur=") for t in r.headers["server-timing"].split(","))
        assert float(timing["decode"]) > 0 and float(timing["model"]) > 0
        got = r.json()
        assert got["label"] == row["prediction"] and got["threshold"] == pytest.approx(
            row["threshold"]
        )
        for c in ("normal", "pneumonia"):
            assert got["probabilities"][c] == pytest.approx(row[f"prob_{c}"], abs=1e-5)


def test_dicom_upload_is_read_by_the_training_rules(served, tmp_path):
    """A compressed MONOCHROME1 12-bit DICOM, decoded from the upload's bytes, gives what the
    Predictor gives for the same file read from disk."""
    from cxrlab.data.dicomwrite import write_dicom

    url, ckpt, *_ = served
    px = (np.arange(96 * 80, dtype=np.uint16).reshape(96, 80) * 7) % 4096
    f = write_dicom(tmp_path / "1.2.3.dcm", px, bits_stored=12, photometric="MONOCHROME1",
                    syntax="jpegls")  # fmt: skip
    r = post(url, None, "1.2.3.dcm", "application/dicom", f.read_bytes())
    assert r.status_code == 200, r.text
    want = Predictor.from_checkpoint(ckpt, "cpu").predict_files([f], progress=False).iloc[0]
    for c, v in r.json()["probabilities"].items():
        assert v == pytest.approx(want[f"prob_{c}"], abs=1e-5)


@pytest.mark.parametrize(
    "name, ctype, data, status, text",
    [
        ("notes.txt", "text/plain", b"hello", 415, "unsupported type"),
        ("x.jpeg", "image/jpeg", b"\xff\xd8 broken jpeg", 422, "x.jpeg"),
        ("x.png", "image/png", b"", 422, "empty"),
        ("big.png", "image/png", b"\0" * (1024 * 1024 + 10), 413, "larger than 1 MB"),
    ],
)
def test_bad_uploads_get_clear_4xx_never_500(served, name, ctype, data, status, text):
    url, *_ = served
    r = post(url, None, name, ctype, data)
    assert r.status_code == status, r.text
    assert text in r.json()["detail"]


def test_a_fault_of_the_server_is_a_500_with_the_traceback_in_its_log(served, caplog):
    """A client's bad upload is 4xx; the server's own fault must not hide among them."""
    from fastapi.testclient import TestClient

    from cxrlab.inference.service import create_app

    url, ckpt, images, _ = served
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")

    def out_of_memory(batch):  # what a real fault looks like from here
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    predictor.predict_arrays = out_of_memory
    client = TestClient(create_app(predictor), raise_server_exceptions=False)
    with caplog.at_level("ERROR"):
        r = client.post("/predict", files={"file": ("x.jpeg", images[0].read_bytes())})
    assert r.status_code == 500
    assert "RuntimeError" in r.json()["detail"] and "2.00 GiB" not in r.json()["detail"]
    assert "CUDA out of memory" in caplog.text  # the traceback is in the server's log
    ok = client.post("/predict", files={"file": ("x.jpeg", b"not an image")})
    assert ok.status_code == 422  # bad uploads stay client errors


def test_batch_and_its_limit(served):
    url, _, images, _ = served
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in images[:3]]
    r = httpx.post(f"{url}/predict_batch", files=files, timeout=60)
    assert r.status_code == 200
    assert [p["filename"] for p in r.json()["predictions"]] == [p.name for p in images[:3]]
    too_many = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in images[:5]]
    r = httpx.post(f"{url}/predict_batch", files=too_many, timeout=60)
    assert r.status_code == 413 and "at most 4" in r.json()["detail"]


def test_concurrent_requests_get_their_own_answers(served):
    url, _, images, _ = served
    alone = {p.name: post(url, p, name=p.name).json()["probabilities"] for p in images}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: post(url, p, name=p.name).json(), images * 3))
    for a in answers:
        assert a["probabilities"] == pytest.approx(alone[a["filename"]], abs=1e-6)


def test_schemathesis_finds_no_server_errors(served):
    """Property-based requests generated from the service's own OpenAPI schema."""
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    url, *_ = served
    proc = subprocess.run(
        [
            exe,
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "30",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_gradcam_overlay_through_the_api_and_predict_py(served, tmp_path):
    import base64

    import cv2

    url, ckpt, images, _ = served
    r = httpx.post(
        f"{url}/predict?gradcam=true",
        files={"file": (images[0].name, images[0].read_bytes(), "image/jpeg")},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    png = base64.b64decode(r.json()["gradcam_png"])
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    size = httpx.get(f"{url}/metadata").json()["preprocess"]["size"]
    assert img.shape == (size, size, 3)
    assert post(url, images[0], name=images[0].name).json()["gradcam_png"] is None  # opt-in

    out = tmp_path / "cams"
    # two exports that reuse a file name (DICOM exports do), each gets its own overlay
    for folder, img in (("a", images[0]), ("b", images[1])):
        (tmp_path / folder).mkdir()
        shutil.copy(img, tmp_path / folder / "image.jpeg")
    proc = run_process(
        [
            sys.executable,
            str(ROOT / "predict.py"),
            "--ckpt",
            str(ckpt),
            str(tmp_path / "a" / "image.jpeg"),
            str(tmp_path / "b" / "image.jpeg"),
            str(images[2]),
            "--out",
            str(tmp_path / "p.csv"),
            "--gradcam",
            str(out),
            "--gradcam-layer",  # the classic setting, one option away from the default
            "last",
            "--gradcam-method",
            "gradcam",
            "--device",
            "cpu",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["a__image.jpeg_gradcam.png", "b__image.jpeg_gradcam.png", f"{images[2].stem}_gradcam.png"]
    )
    preds = pd.read_csv(tmp_path / "p.csv")
    for row in preds.itertuples():
        cam = cv2.imread(row.gradcam)
        assert cam.shape[1] >= 512 and cam.shape[0] > cam.shape[1]  # readable, a caption above
        banner = cam[: cam.shape[0] - cam.shape[1]]
        assert banner.max() == 255  # the class and probability are written on it


def test_predict_py_says_what_went_wrong(served, tmp_path, capsys):
    """A missing checkpoint is named by the flag the user typed; nothing readable is exit 1."""
    from cxrlab.inference.predictor import main

    _, ckpt, images, _ = served
    with pytest.raises(SystemExit) as e:
        main(["--ckpt", str(tmp_path / "nope.ckpt"), str(images[0])])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--ckpt " in err and "nope.ckpt: no such file" in err and "ckpt_path" not in err
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    out = tmp_path / "p.csv"
    assert main(["--ckpt", str(ckpt), str(junk), "--out", str(out), "--device", "cpu"]) == 1
    assert pd.read_csv(out)["error"].notna().all()
    assert main(["--ckpt", str(ckpt), str(junk), str(images[0]), "--out", str(out)]) == 0
    from cxrlab.inference.service import main as serve_main

    with pytest.raises(SystemExit) as e:
        serve_main(["--ckpt", str(tmp_path / "nope.ckpt")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--ckpt " in err and "nope.ckpt: no such file" in err and "Traceback" not in err


@pytest.mark.parametrize("fmt, name", [("onnx", "model.onnx"), ("torchscript", "model.pt")])
def test_export_matches_pytorch(served, tmp_path, fmt, name, caplog):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from cxrlab.export import main, max_abs_difference

    _, ckpt, images, _ = served
    out = tmp_path / name
    # `python -m cxrlab.export ...`'s main, in this process (the command line itself is
    # checked by test_doc_commands.py)
    caplog.set_level("INFO", logger="cxrlab.export")
    assert main(["--ckpt", str(ckpt), "--format", fmt, "--out", str(out), "--check"]) == 0
    assert "Largest absolute difference from PyTorch on 8 phantom radiographs: logits" in (
        caplog.text
    )
    # the served test images (files, another batch size), compared on logits
    assert max_abs_difference(ckpt, out, fmt, paths=[str(p) for p in images[:5]]) < 1e-4
    # a wrong export (a model whose weights differ a little) fails the check
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    key = next(k for k, v in state["state_dict"].items() if v.ndim == 4)
    state["state_dict"][key] = state["state_dict"][key] * 1.05
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    assert max_abs_difference(other, out, fmt) > 1e-3
    meta = json.loads(out.with_suffix(out.suffix + ".json").read_text())
    assert meta["classes"] == ["normal", "pneumonia"] and meta["threshold"] is not None


def test_waiting_for_a_server_that_died_or_never_answers_fails_fast():
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait(30)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RuntimeError, match=r"exited \(code 3\)"):
        wait_until_healthy(url, dead, timeout=60)
    with pytest.raises(RuntimeError, match="did not answer within 1 s"):
        wait_until_healthy(url, timeout=1)
