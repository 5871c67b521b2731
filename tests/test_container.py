"""The service as a container image (Dockerfile), built with podman and run as a user runs it
(docker's commands are the same), talked to over HTTP on 127.0.0.1; and serve.py's settings
from the environment, which is how the image is configured.

The image tests need podman. .ci/run installs it (.ci/container.sh: Debian's podman and runc,
a Debian base image made offline by docker/base-image.sh, CONTAINERS_CONF for this kind of
machine); elsewhere they skip until podman is installed, then build on the Dockerfile's default
base image (or CXRLAB_TEST_BASE_IMAGE). A first build installs the pinned dependencies (about
5 minutes here); later builds reuse that layer.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from conftest import ROOT, free_port, run_process, train_here

from cxrlab.inference import service

IMAGE = "localhost/cxrlab-serve:test"


# ---- serve.py's settings: flags, then the environment, then the defaults ----------------------


def test_settings_come_from_flags_then_the_environment_then_defaults():
    env = {"CXRLAB_CKPT": "/models/model.ckpt", "CXRLAB_PORT": "9001", "CXRLAB_WORKERS": "2",
           "CXRLAB_THREADS": "", "CXRLAB_MAX_UPLOAD_MB": "5"}  # fmt: skip
    args = service.settings(["--port", "9002"], env)
    assert (args.ckpt, args.port, args.workers, args.max_upload_mb) == (
        "/models/model.ckpt", 9002, 2, 5.0,  # the flag beat CXRLAB_PORT
    )  # fmt: skip
    assert (args.host, args.max_batch) == ("127.0.0.1", 16)  # defaults
    # an empty variable is unset (the image declares them all); threads: the cores but one,
    # shared by the workers
    assert args.threads == max(1, (service.usable_cpus() - 1) // 2)
    assert service.settings(["--ckpt", "a.ckpt"], {}).ckpt == "a.ckpt"


@pytest.mark.parametrize(
    "env, argv, message",
    [
        ({"CXRLAB_PORT": "http"}, [], "CXRLAB_PORT='http': not an integer"),
        ({"CXRLAB_MAX_UPLOAD_MB": "lots"}, [], "CXRLAB_MAX_UPLOAD_MB='lots': not a number"),
        ({"CXRLAB_WORKERS": "0"}, [], "CXRLAB_WORKERS=0: out of range"),
        ({}, ["--workers", "0"], "--workers=0: out of range"),
        ({"CXRLAB_CKPT": ""}, [], "a checkpoint is needed: --ckpt best.ckpt (or CXRLAB_CKPT)"),
    ],
)
def test_a_bad_setting_is_a_usage_error_naming_the_variable(env, argv, message, capsys):
    env = {"CXRLAB_CKPT": "m.ckpt", **env}
    with pytest.raises(SystemExit) as e:
        service.settings(argv, env)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_a_checkpoint_missing_from_its_mount_says_how_to_mount_it(capsys, monkeypatch):
    monkeypatch.setenv("CXRLAB_CKPT", "/models/model.ckpt")
    with pytest.raises(SystemExit) as e:
        service.main(["--device", "cpu", "--threads", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "CXRLAB_CKPT=/models/model.ckpt: no such file" in err
    assert "mount one there: -v /path/to/best.ckpt:/models/model.ckpt:ro" in err


# ---- the image ------------------------------------------------------------------------------


def podman(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    if check and proc.returncode != 0:
        hint = ""
        if "rlimit" in proc.stderr or "cgroup" in proc.stderr:
            hint = (
                "\n(podman's defaults fail on this machine: CONTAINERS_CONF=docker/containers.conf)"
            )
        raise AssertionError(f"podman {' '.join(map(str, args))}: {proc.stderr[-3000:]}{hint}")
    return proc


def build(context: Path, tag: str) -> None:
    """docker/build.sh (podman build with this machine's pip settings) in ``context``."""
    env = dict(os.environ, PIP=f"{sys.executable} -m pip")
    if os.environ.get("CXRLAB_TEST_BASE_IMAGE"):
        env["BASE_IMAGE"] = os.environ["CXRLAB_TEST_BASE_IMAGE"]
    proc = subprocess.run(
        ["bash", str(context / "docker" / "build.sh"), "-t", tag],
        cwd=context, env=env, capture_output=True, text=True, timeout=2400,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]


@pytest.fixture(scope="module")
def image():
    if shutil.which("podman") is None:
        if os.environ.get("CI"):
            pytest.fail("podman is missing: .ci/run installs it (.ci/container.sh)")
        pytest.skip("needs podman (apt-get install podman runc; bash .ci/container.sh)")
    build(ROOT, IMAGE)
    return IMAGE


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_phantom):
    tmp = tmp_path_factory.mktemp("container")
    train_here(tmp, "trainer.max_epochs=1", "evaluation.bootstrap=20")
    ckpt = tmp / "run" / "checkpoints" / "best.ckpt"
    images = sorted((tiny_phantom / "chest_xray" / "test").rglob("*.jpeg"))[:3]
    from pydicom.data import get_testdata_file

    # NEMA's RG1: a real PA chest CR, MONOCHROME1, 15 bits (pydicom-data)
    images.append(Path(get_testdata_file("RG1_UNCR.dcm")))
    return tmp, ckpt, images


def start(image: str, *options: str, timeout: float = 240) -> tuple[str, str, float]:
    """``podman run -d`` the service on a free loopback port, as the README's command does
    (read-only root filesystem, a tmpfs /tmp); returns the container, its URL and the seconds
    from the run command to the first answered /health."""
    port = free_port()
    name = f"cxrlab-test-{port}"
    t0 = time.monotonic()
    try:
        podman("run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
               "-e", "CXRLAB_HOST=127.0.0.1", "-e", f"CXRLAB_PORT={port}", *options, image)  # fmt: skip
    except AssertionError:
        podman("rm", "-f", name, check=False)  # created but not started
        raise
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() - t0 < timeout:
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state not in ("running", "created", "configured"):
            logs = podman("logs", name, check=False)
            raise AssertionError(f"{name} {state}: {logs.stdout[-2000:]}{logs.stderr[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return name, url, time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{name}: no answer within {timeout:.0f} s")


@pytest.fixture(scope="module")
def served(image, trained):
    """The image with the checkpoint mounted, two worker processes, on the CPU."""
    _, ckpt, _ = trained
    name, url, _ = start(image, "-e", "CXRLAB_WORKERS=2", "-e", "CXRLAB_DEVICE=cpu",
                         "-v", f"{ckpt}:/models/model.ckpt:ro")  # fmt: skip
    yield name, url
    podman("rm", "-f", "-t", "0", name, check=False)


def post(url: str, path: Path, ctype: str = "application/octet-stream", data=None):
    data = path.read_bytes() if data is None else data
    return httpx.post(f"{url}/predict", files={"file": (path.name, data, ctype)}, timeout=60)


@pytest.mark.slow
def test_it_answers_as_an_unprivileged_user_with_its_health_check(served, trained):
    name, url = served
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    meta = httpx.get(f"{url}/metadata").json()
    assert meta["checkpoint"] == "/models/model.ckpt" and meta["classes"] == ["normal", "pneumonia"]
    assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
    # the image's HEALTHCHECK (docker format) runs and passes
    health = json.loads(podman("inspect", "--format", "{{json .Config.Healthcheck}}", name).stdout)
    assert "/health" in " ".join(health["Test"])
    assert podman("healthcheck", "run", name, check=False).returncode == 0
    # CXRLAB_WORKERS=2: two server processes, each with its model, none killed while loading
    deadline = time.monotonic() + 120
    while (logs := podman("logs", name).stderr).count("Application startup complete") < 2:
        assert time.monotonic() < deadline, logs[-2000:]
        time.sleep(1)
    assert logs.count("Started server process") == 2 and "died" not in logs, logs[-2000:]


@pytest.mark.slow
def test_predictions_are_those_of_predict_py_on_the_host(served, trained, tmp_path):
    _, url = served
    _, ckpt, images = trained
    out = tmp_path / "p.csv"
    proc = run_process([sys.executable, str(ROOT / "predict.py"), "--ckpt", str(ckpt),
                        *map(str, images), "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = pd.read_csv(out)
    assert len(expected) == len(images)
    for path, row in zip(images, expected.itertuples()):
        got = post(url, path)
        assert got.status_code == 200, got.text
        got = got.json()
        assert got["label"] == row.prediction, path
        for c in ("normal", "pneumonia"):
            assert got["probabilities"][c] == pytest.approx(getattr(row, f"prob_{c}"), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, ctype, data, status",
    [
        ("notes.txt", "text/plain", b"not an image", 415),
        ("scan.png", "image/png", b"\x89PNG\r\n\x1a\n broken", 422),
        ("empty.dcm", "application/dicom", b"", 422),
    ],
)
def test_bad_uploads_get_4xx(served, name, ctype, data, status):
    _, url = served
    r = post(url, Path(name), ctype, data)
    assert r.status_code == status and name in r.json()["detail"], r.text


@pytest.mark.slow
def test_a_baked_in_checkpoint_needs_no_mount_and_a_missing_one_is_named(image, trained, served):
    tmp, ckpt, images = trained
    # no mount, nothing baked: a one-line error saying how to mount it, exit status 2
    proc = podman("run", "--rm", "--network", "host", image, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "mount one there: -v /path/to/best.ckpt:/models/model.ckpt:ro" in proc.stderr
    # the build context with models/model.ckpt: baked in (the dependency layers are reused)
    context = tmp / "context"
    context.mkdir()
    for part in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "serve.py"):
        shutil.copy(ROOT / part, context / part)
    for part in ("src", "docker"):
        shutil.copytree(ROOT / part, context / part, ignore=shutil.ignore_patterns("__pycache__"))
    (context / "models").mkdir()
    shutil.copy(ckpt, context / "models" / "model.ckpt")
    build(context, f"{image}-baked")
    name, url, _ = start(f"{image}-baked", "-e", "CXRLAB_DEVICE=cpu")
    try:
        assert httpx.get(f"{url}/metadata").json()["checkpoint"] == "/models/model.ckpt"
        mounted = post(served[1], images[0]).json()
        assert post(url, images[0]).json()["probabilities"] == pytest.approx(
            mounted["probabilities"], abs=1e-6
        )
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        podman("rmi", f"{image}-baked", check=False)


@pytest.mark.slow
def test_sigterm_stops_it_cleanly(served):
    """docker stop / podman stop: SIGTERM, uvicorn's graceful shutdown of both workers, exit
    status 0 (a SIGKILL after the grace period would be 137)."""
    name, url = served
    assert httpx.get(f"{url}/health").status_code == 200
    podman("stop", "-t", "60", name, timeout=120)
    assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    logs = podman("logs", name).stderr
    assert logs.count("Finished server process") == 2, logs[-2000:]
