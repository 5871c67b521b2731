"""The service's container image against serve.py on the host, side by side.

    python benchmarks/container.py [--ckpt best.ckpt] [--rounds 3] [--requests 30]

Needs podman (or CONTAINER_ENGINE=docker) and the image (docker/build.sh -t cxrlab-serve; built
here when missing, BASE_IMAGE as for that script). Without --ckpt it trains the one-epoch
224 px DenseNet121 (xrv) checkpoint of serve_latency.py. Measures, alternating the two sides
each round:
(a) cold start: from the start command (`podman run -d ...` / `python serve.py ...`) to the
    first answered /health and to the first answered POST /predict of a phantom JPEG;
(b) POST /predict p50 once warm, one request at a time;
and the image's size (all of it, and the layer with the Python environment).
Writes benchmarks/results/container.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
from common import BENCH, save  # noqa: E402
from serve_latency import make_checkpoint  # noqa: E402

ENGINE = os.environ.get("CONTAINER_ENGINE", "podman")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([ENGINE, *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{ENGINE} {' '.join(args)}: {proc.stderr[-2000:]}")
    return proc


def first_answers(url: str, image: Path, t0: float, timeout: float = 300) -> tuple[float, float]:
    """Seconds from t0 to the first answered /health, then to the first answered /predict."""
    health = None
    while time.monotonic() - t0 < timeout:
        try:
            if health is None and httpx.get(f"{url}/health", timeout=2).status_code == 200:
                health = time.monotonic() - t0
            if health is not None:
                r = httpx.post(f"{url}/predict", files={"file": (image.name, image.read_bytes())},
                               timeout=60)  # fmt: skip
                r.raise_for_status()
                return health, time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}: no answer within {timeout:.0f} s")


def warm_p50(url: str, image: Path, n: int) -> float:
    data, times = image.read_bytes(), []
    for _ in range(n):
        t = time.perf_counter()
        httpx.post(f"{url}/predict", files={"file": (image.name, data)}, timeout=60)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def container_round(tag: str, ckpt: Path, image: Path, n: int) -> dict:
    port = free_port()
    name = f"cxrlab-bench-{port}"
    t0 = time.monotonic()
    engine("run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
           "-e", "CXRLAB_HOST=127.0.0.1", "-e", f"CXRLAB_PORT={port}", "-e", "CXRLAB_DEVICE=cpu",
           "-v", f"{ckpt}:/models/model.ckpt:ro", tag)  # fmt: skip
    try:
        health, predict = first_answers(f"http://127.0.0.1:{port}", image, t0)
        return {"health_s": health, "first_predict_s": predict,
                "warm_predict_p50_ms": warm_p50(f"http://127.0.0.1:{port}", image, n)}  # fmt: skip
    finally:
        engine("rm", "-f", "-t", "0", name, check=False)


def host_round(ckpt: Path, image: Path, n: int) -> dict:
    port = free_port()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "serve.py"), "--ckpt", str(ckpt), "--port", str(port),
         "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        health, predict = first_answers(f"http://127.0.0.1:{port}", image, t0)
        return {"health_s": health, "first_predict_s": predict,
                "warm_predict_p50_ms": warm_p50(f"http://127.0.0.1:{port}", image, n)}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(60)


def image_size(tag: str) -> dict:
    info = json.loads(engine("image", "inspect", tag).stdout)[0]
    layers = engine("history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", tag)
    layers = layers.stdout.splitlines()
    deps = next((line.split("\t")[0] for line in layers if "requirements.txt" in line), None)
    return {"image_bytes": info["Size"], "environment_layer": deps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt")
    p.add_argument("--tag", default="localhost/cxrlab-serve:bench")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=30)
    args = p.parse_args()
    ckpt = Path(args.ckpt) if args.ckpt else BENCH / "serve-ckpt" / "checkpoints" / "best.ckpt"
    if not ckpt.is_file():
        ckpt = make_checkpoint(BENCH / "serve-ckpt")
    image = sorted((ROOT / "data").rglob("*.jpeg"))[0]
    if engine("image", "exists", args.tag, check=False).returncode != 0:
        t = time.monotonic()
        subprocess.run(["bash", str(ROOT / "docker" / "build.sh"), "-t", args.tag], check=True)
        print(f"built {args.tag} in {time.monotonic() - t:.0f} s")
    rounds = {"container": [], "host": []}
    for r in range(args.rounds):  # alternate which side goes first
        order = ("container", "host") if r % 2 == 0 else ("host", "container")
        for side in order:
            res = (container_round(args.tag, ckpt, image, args.requests) if side == "container"
                   else host_round(ckpt, image, args.requests))  # fmt: skip
            print(side, {k: round(v, 2) for k, v in res.items()}, flush=True)
            rounds[side].append(res)
    med = {side: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
           for side, rs in rounds.items()}  # fmt: skip
    save(
        "container",
        {
            "image": args.tag,
            "checkpoint": "DenseNet121 (xrv), 224 px, one epoch on the phantom",
            "request_image": f"{image.name} ({image.stat().st_size // 1024} KB JPEG)",
            **image_size(args.tag),
            "median": med,
            "ratio_container_over_host": {
                k: med["container"][k] / med["host"][k] for k in med["host"]
            },
            "rounds": rounds,
        },
    )


if __name__ == "__main__":
    main()
