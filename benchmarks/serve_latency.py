"""Serving latency: the HTTP API against the bare model forward on the same input.

    python benchmarks/serve_latency.py [--ckpt best.ckpt] [--requests 60] [--out serve_latency]

Without --ckpt it trains a one-epoch 224 px DenseNet121 (xrv) checkpoint on the phantom (the
weights do not matter for speed). Then, on one phantom JPEG:
(a) the bare model forward of the preprocessed image (batch 1, no_grad), p50/p95;
(b) POST /predict to `serve.py` on 127.0.0.1, one request at a time, p50/p95 (upload,
    JPEG decode, preprocessing, forward, JSON);
(c) 8 concurrent clients: requests/s.
API overhead at p50 = (b - a) / a, against the forward with every core and against the
forward with the server's own thread count (`--server-threads`, default all cores but one).
Writes benchmarks/results/<--out>.json (serve_latency).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
from common import BENCH, save, train_py  # noqa: E402


def pct(xs, q):
    return float(np.percentile(np.array(xs) * 1000, q))


def make_checkpoint(out: Path) -> Path:
    train_py(
        "debug=default",
        "data.preprocess.size=224",
        "evaluation.bootstrap=10",
        f"paths.data_dir={BENCH / 'serve-data'}",
        f"hydra.run.dir={out}",
    )
    return out / "checkpoints" / "best.ckpt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt")
    p.add_argument("--requests", type=int, default=60)
    p.add_argument("--server-threads", type=int, help="serve.py --threads (default: its own)")
    p.add_argument("--out", default="serve_latency", help="benchmarks/results/<out>.json")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    ckpt = Path(args.ckpt) if args.ckpt else make_checkpoint(BENCH / "serve-ckpt")
    image = sorted((BENCH / "serve-data").rglob("*.jpeg"))[0] if not args.ckpt else None
    if image is None:
        image = sorted((ROOT / "data").rglob("*.jpeg"))[0]
    data = image.read_bytes()

    from cxrlab.data.preprocess import load_preprocessed
    from cxrlab.inference.predictor import Predictor
    from cxrlab.inference.service import usable_cpus, wait_until_healthy

    pred = Predictor.from_checkpoint(ckpt, "cpu")
    arr = load_preprocessed(image, pred.spec)
    x = pred.model.to_network_input(torch.from_numpy(arr)[None, None])

    def forwards(threads: int) -> list[float]:
        torch.set_num_threads(threads)
        out = []
        with torch.no_grad():
            for i in range(args.requests + 5):
                t0 = time.perf_counter()
                pred.model(x)
                if i >= 5:
                    out.append(time.perf_counter() - t0)
        return out

    # the baseline: the bare forward with every core (the fastest it runs here); also with the
    # server's thread count, the same work the model does inside the server
    server_threads = args.server_threads or max(1, usable_cpus() - 1)
    forward_server_threads = forwards(server_threads)
    forward = forwards(os.cpu_count() or 1)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "serve.py"),
            "--ckpt",
            str(ckpt),
            "--port",
            str(port),
            "--device",
            "cpu",
            *(["--threads", str(args.server_threads)] if args.server_threads else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server, timeout=120)
        with httpx.Client(timeout=60) as client:
            timings = []  # the server's own Server-Timing: decode and model milliseconds

            def one():
                t0 = time.perf_counter()
                r = client.post(f"{url}/predict", files={"file": (image.name, data, "image/jpeg")})
                r.raise_for_status()
                dt = time.perf_counter() - t0
                parts = r.headers.get("server-timing", "").split(",")
                timings.append(
                    {k.strip(): float(v) for k, v in (t.split(";dur=") for t in parts if t)}
                )
                return dt

            for _ in range(5):
                one()
            timings.clear()
            api = [one() for _ in range(args.requests)]
            server_side = {
                k: round(statistics.median(t[k] for t in timings), 1) for k in ("decode", "model")
            }
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda _: one(), range(args.requests)))
            concurrent_rps = args.requests / (time.perf_counter() - t0)
    finally:
        server.terminate()
        server.wait(30)

    result = {
        "checkpoint": str(ckpt),
        "image": f"{image.name} ({len(data) // 1024} KB JPEG), preprocessed to {pred.spec.size} px",
        "model": pred.model.hparams["backbone"],
        "forward_ms": {"p50": round(pct(forward, 50), 1), "p95": round(pct(forward, 95), 1)},
        "forward_ms_server_threads": {
            "threads": server_threads,
            "p50": round(pct(forward_server_threads, 50), 1),
        },
        "api_ms": {"p50": round(pct(api, 50), 1), "p95": round(pct(api, 95), 1)},
        "api_overhead_p50_pct": round(
            100 * (statistics.median(api) / statistics.median(forward) - 1), 1
        ),
        # what HTTP, upload, decoding and JSON add to the same forward with the same threads
        "api_overhead_vs_same_threads_p50_pct": round(
            100 * (statistics.median(api) / statistics.median(forward_server_threads) - 1), 1
        ),
        "server_threads": server_threads,
        "server_timing_p50_ms": server_side,
        "concurrent_8_clients_rps": round(concurrent_rps, 2),
        "sequential_rps": round(1 / statistics.mean(api), 2),
    }
    save(args.out.removesuffix(".json"), result)


if __name__ == "__main__":
    main()
