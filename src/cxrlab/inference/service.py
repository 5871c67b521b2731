"""The HTTP API over a ``Predictor``: ``python serve.py --ckpt best.ckpt``.

Uploads go through the training run's exact read/preprocess path (``imageio.read_image`` via
``load_preprocessed``, decoded from the upload's bytes in memory with its suffix), so PNG, JPEG
and DICOM are read by the same rules as in training. Bad input never becomes a 500: unsupported
types are 415, files that do not decode are 422 with the reason, uploads over the size limit and
batches over the count limit are 413. A fault of the server itself (not the client's) is a 500,
so monitoring sees it, with the traceback in the server log and no internals in the answer. Inference runs in a worker thread (the event loop stays
free); one lock serializes the model, so concurrent requests are answered correctly.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from cxrlab.data.imageio import SUPPORTED_SUFFIXES, UnreadableImageError
from cxrlab.data.preprocess import load_preprocessed
from cxrlab.errors import EXIT_USER_ERROR, UserError
from cxrlab.inference.gradcam import gradcam_layer
from cxrlab.inference.predictor import Predictor, add_gradcam_options

log = logging.getLogger(__name__)

# content types a browser or client may send for files we can read
IMAGE_TYPES = {
    "image/png": ".png",
    "image/jpeg": ".jpeg",
    "image/jpg": ".jpeg",
    "image/tiff": ".tiff",
    "image/bmp": ".bmp",
    "application/dicom": ".dcm",
}
GENERIC_TYPES = {"application/octet-stream", "", None}


class Prediction(BaseModel):
    filename: str
    label: str
    probabilities: dict[str, float]
    # binary: the positive class's threshold; multi-label: one per finding
    threshold: float | list[float] | None
    positive_class: str | None
    # multi-label: the findings whose probability reaches their threshold
    findings: list[str] | None = None
    # ?gradcam=true: a PNG overlay of the predicted class's Grad-CAM heatmap, base64
    gradcam_png: str | None = None


class BatchPrediction(BaseModel):
    predictions: list[Prediction]


class Metadata(BaseModel):
    model: str
    classes: list[str]
    threshold: float | list[float] | None
    threshold_policy: str | None
    input_spec: dict
    preprocess: dict
    checkpoint: str | None
    cxrlab_version: str
    max_upload_mb: float
    max_batch: int
    # what ?gradcam=true computes: the target module and the method (serve.py --gradcam-*)
    gradcam: dict[str, str]


class Error(BaseModel):
    detail: str


def _version() -> str:
    try:
        return version("cxrlab")
    except PackageNotFoundError:
        return "unknown"


def suffix_for(upload: UploadFile) -> str:
    """The file suffix to read an upload with, or 415."""
    name_suffix = Path(upload.filename or "").suffix.lower()
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if ctype in IMAGE_TYPES:
        return name_suffix if name_suffix in SUPPORTED_SUFFIXES else IMAGE_TYPES[ctype]
    if ctype in GENERIC_TYPES and name_suffix in SUPPORTED_SUFFIXES:
        return name_suffix
    raise HTTPException(
        415,
        f"{upload.filename or 'upload'}: unsupported type {ctype or 'unknown'!r}; send PNG, "
        f"JPEG, TIFF, BMP or DICOM ({', '.join(sorted(SUPPORTED_SUFFIXES))})",
    )


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS says it; else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def create_app(
    predictor: Predictor,
    max_upload_mb: float = 20.0,
    max_batch: int = 16,
    checkpoint: str | None = None,
) -> FastAPI:
    from fastapi_offline import FastAPIOffline

    # /docs and /redoc load Swagger UI and ReDoc from the package, not a CDN: hospital networks
    # are often offline, and a blank docs page there is no documentation
    app = FastAPIOffline(
        title="cxrlab",
        version=_version(),
        description="Chest X-ray classification with a cxrlab checkpoint.",
    )
    lock = threading.Lock()
    limit = int(max_upload_mb * 1024 * 1024)
    errors = {413: {"model": Error}, 415: {"model": Error}, 422: {"model": Error}}

    async def read_bytes(upload: UploadFile) -> tuple[bytes, str]:
        suffix = suffix_for(upload)
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"{upload.filename}: larger than {max_upload_mb:g} MB")
        if not data:
            raise HTTPException(422, f"{upload.filename}: empty file")
        return data, suffix

    async def read_upload(upload: UploadFile) -> np.ndarray:
        data, suffix = await read_bytes(upload)
        return await run_in_threadpool(_decode, data, suffix, upload.filename or "upload")

    def _decode(data: bytes, suffix: str, name: str) -> np.ndarray:
        try:
            return load_preprocessed(f"upload{suffix}", predictor.spec, data)
        except UnreadableImageError as e:
            raise HTTPException(422, f"{name}: {e.reason}") from e
        except Exception as e:  # a decoder's own error on hostile bytes
            raise HTTPException(422, f"{name}: cannot decode ({type(e).__name__}: {e})") from e

    def _predict(images: list[np.ndarray]) -> np.ndarray:
        with lock:
            return predictor.predict_arrays(np.stack(images))

    def to_predictions(names: list[str], probs: np.ndarray) -> list[Prediction]:
        labels = predictor.label(probs)
        multi = predictor.multilabel
        binary = len(predictor.classes) == 2 and not multi
        found = predictor.positive_findings(probs) if multi else [None] * len(labels)
        return [
            Prediction(
                filename=n,
                label=lab,
                probabilities={c: float(v) for c, v in zip(predictor.classes, p)},
                threshold=predictor.threshold if binary or multi else None,
                positive_class=predictor.classes[1] if binary else None,
                findings=f,
            )
            for n, lab, p, f in zip(names, labels, probs, found)
        ]

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        # not the client's fault (bad uploads are 4xx above): a 500 that monitoring counts, the
        # traceback in the server's log, and nothing of the internals in the answer
        log.exception("Unexpected error on %s", request.url.path)
        return JSONResponse(
            status_code=500,
            content={"detail": f"internal server error ({type(exc).__name__}); see the server log"},
        )

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/metadata", response_model=Metadata)
    def metadata() -> Metadata:
        hp = predictor.model.hparams
        return Metadata(
            model=str(hp.get("backbone")),
            classes=predictor.classes,
            threshold=predictor.threshold,
            threshold_policy=predictor.model.threshold_policy,
            input_spec=dict(hp.get("input_spec") or {}),
            preprocess=predictor.spec.to_dict(),
            checkpoint=checkpoint,
            cxrlab_version=_version(),
            max_upload_mb=max_upload_mb,
            max_batch=max_batch,
            gradcam={
                "layer": gradcam_layer(str(hp.get("backbone")), predictor.gradcam_layer),
                "method": predictor.gradcam_method,
            },
        )

    def _gradcam(image: np.ndarray, label: str) -> str:
        import base64

        import cv2

        with lock:
            (rgb,) = predictor.gradcam_overlays(image[None], [label])
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        return base64.b64encode(png.tobytes()).decode("ascii")

    @app.post("/predict", response_model=Prediction, responses=errors)
    async def predict(
        file: Annotated[UploadFile, File()],
        response: Response,
        gradcam: bool = False,
        finding: str | None = None,
    ) -> Prediction:
        """One PNG/JPEG/DICOM radiograph: per-class probabilities, label and threshold;
        ``gradcam=true`` adds a Grad-CAM overlay PNG (base64) of the predicted class (a
        multi-label model: of ``finding``, else the most probable finding).
        The ``Server-Timing`` header gives the decode and model milliseconds."""
        data, suffix = await read_bytes(file)
        name = file.filename or "upload"

        def work():  # decode and forward in one worker-thread hop
            t0 = time.perf_counter()
            image = _decode(data, suffix, name)
            t1 = time.perf_counter()
            probs = _predict([image])
            return image, probs, t1 - t0, time.perf_counter() - t1

        image, probs, decode_s, model_s = await run_in_threadpool(work)
        response.headers["Server-Timing"] = (
            f"decode;dur={decode_s * 1000:.1f}, model;dur={model_s * 1000:.1f}"
        )
        if finding is not None and (not predictor.multilabel or finding not in predictor.classes):
            raise HTTPException(
                422,
                f"finding={finding!r}: "
                + (f"use one of {predictor.classes}" if predictor.multilabel
                   else "only for multi-label models"),
            )  # fmt: skip
        out = to_predictions([name], probs)[0]
        if gradcam:
            # multi-label: the chosen or the most probable finding's map
            if finding is not None:
                target = finding
            else:
                (target,) = predictor.gradcam_targets([out.label], probs)
            out.gradcam_png = await run_in_threadpool(_gradcam, image, target)
        return out

    @app.post("/predict_batch", response_model=BatchPrediction, responses=errors)
    async def predict_batch(files: Annotated[list[UploadFile], File()]) -> BatchPrediction:
        """Up to ``max_batch`` radiographs in one request, predicted as one batch."""
        if len(files) > max_batch:
            raise HTTPException(413, f"{len(files)} files: at most {max_batch} per request")
        images = [await read_upload(f) for f in files]
        probs = await run_in_threadpool(_predict, images)
        return BatchPrediction(
            predictions=to_predictions([f.filename or "upload" for f in files], probs)
        )

    return app


def wait_until_healthy(url: str, proc=None, timeout: float = 120.0) -> None:
    """Block until ``GET <url>/health`` answers 200 (a server started as a subprocess loads its
    checkpoint first). Raises RuntimeError, with the exit code, as soon as ``proc`` (a
    ``subprocess.Popen``) has exited, or when ``timeout`` seconds pass."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited (code {proc.returncode}) before {url} answered")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url}/health did not answer within {timeout:.0f} s")


# serve.py's settings that the environment may give (the container image sets them): a flag on
# the command line wins over its variable, the variable over the default
ENVIRONMENT = {
    "ckpt": "CXRLAB_CKPT",
    "host": "CXRLAB_HOST",
    "port": "CXRLAB_PORT",
    "device": "CXRLAB_DEVICE",
    "threads": "CXRLAB_THREADS",
    "workers": "CXRLAB_WORKERS",
    "max_upload_mb": "CXRLAB_MAX_UPLOAD_MB",
    "max_batch": "CXRLAB_MAX_BATCH",
}
# a worker process of uvicorn --workers N builds its app from these (set by main)
_WORKER_ENV = "CXRLAB_SERVE_WORKER"
# seconds a worker process may take to answer uvicorn's supervisor: starting (imports and the
# model) or, later, when busy; past it the worker is killed and replaced
WORKER_START_S = 120


def _parser():
    import argparse

    p = argparse.ArgumentParser(
        description="Serve a cxrlab checkpoint over HTTP (FastAPI). Each setting can also come "
        "from the environment variable named in its help (a flag wins over its variable).",
    )

    def add(flag, dest, help, **kw):
        p.add_argument(flag, dest=dest, help=f"{help} [{ENVIRONMENT[dest]}]", **kw)

    add("--ckpt", "ckpt", "a checkpoint written by train.py")
    add("--host", "host", "address to bind (default 127.0.0.1; the container image: 0.0.0.0)")
    add("--port", "port", "port (default 8000)", type=int)
    add("--device", "device", "cpu, cuda, cuda:1 (default: cuda if any)")
    add("--max-upload-mb", "max_upload_mb", "largest upload (default 20)", type=float)
    add("--max-batch", "max_batch", "most files per /predict_batch request (default 16)", type=int)
    add(
        "--threads",
        "threads",
        "CPU threads for the model in each worker (default: all cores but one, shared among the "
        "workers; one is left to HTTP handling and decoding; see docs/serving.md)",
        type=int,
    )
    add(
        "--workers",
        "workers",
        "server processes, each with its own copy of the model (default 1: requests share one "
        "model; more answer concurrent requests in parallel on CPUs, at a model's memory each)",
        type=int,
    )
    add_gradcam_options(p)
    return p


SETTING_TYPES = {
    "port": int,
    "threads": int,
    "workers": int,
    "max_batch": int,
    "max_upload_mb": float,
}
SETTING_DEFAULTS = {
    "host": "127.0.0.1",
    "port": 8000,
    "max_upload_mb": 20.0,
    "max_batch": 16,
    "workers": 1,
}


def settings(argv: list[str] | None = None, environ=None):
    """serve.py's settings: flags, then the environment (``ENVIRONMENT``), then the defaults.
    A bad value in a variable is a usage error naming the variable."""
    environ = os.environ if environ is None else environ
    p = _parser()
    args = p.parse_args(argv)
    args.from_env = set()
    for dest, var in ENVIRONMENT.items():
        if getattr(args, dest) is not None:
            continue
        raw = environ.get(var, "").strip()
        if raw:  # empty = unset (the image declares every variable, most of them empty)
            kind = SETTING_TYPES.get(dest, str)
            try:
                value = kind(raw)
            except ValueError:
                p.error(f"{var}={raw!r}: not a{'n integer' if kind is int else ' number'}")
            setattr(args, dest, value)
            args.from_env.add(dest)
        else:
            setattr(args, dest, SETTING_DEFAULTS.get(dest))
    if args.ckpt is None:
        p.error(f"a checkpoint is needed: --ckpt best.ckpt (or {ENVIRONMENT['ckpt']})")
    for dest in ("port", "workers", "max_batch"):
        if getattr(args, dest) < 1 or (dest == "port" and args.port > 65535):
            p.error(f"{_named(args, dest)}={getattr(args, dest)}: out of range")
    if args.threads is not None and args.threads < 1:
        p.error(f"{_named(args, 'threads')}={args.threads}: at least 1")
    if args.max_upload_mb <= 0:
        p.error(f"{_named(args, 'max_upload_mb')}={args.max_upload_mb:g}: must be positive")
    if args.threads is None:  # the cores but one, shared among the worker processes
        args.threads = max(1, (usable_cpus() - 1) // args.workers)
    return args


def _named(args, dest: str) -> str:
    return ENVIRONMENT[dest] if dest in args.from_env else "--" + dest.replace("_", "-")


def load_predictor(args) -> Predictor:
    """The checkpoint's Predictor, or a UserError naming how the path was given."""
    torch.set_num_threads(args.threads)
    try:
        return Predictor.from_checkpoint(
            args.ckpt,
            args.device,
            args.gradcam_layer,
            args.gradcam_method,
            name=_named(args, "ckpt"),
        )
    except UserError as e:
        if "ckpt" in args.from_env and not Path(args.ckpt).is_file():
            raise UserError(
                f"{e}. In a container, mount one there: -v /path/to/best.ckpt:{args.ckpt}:ro"
            ) from e
        raise


def worker_app() -> FastAPI:
    """The app of one uvicorn worker process (``--workers N``): the settings main() checked,
    passed through the environment, and the worker's own copy of the model."""
    import json
    from argparse import Namespace

    args = Namespace(**json.loads(os.environ[_WORKER_ENV]))
    args.from_env = set(args.from_env)
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )
    predictor = load_predictor(args)
    return create_app(predictor, args.max_upload_mb, args.max_batch, checkpoint=str(args.ckpt))


def main(argv: list[str] | None = None) -> None:
    import json

    import uvicorn

    args = settings(argv)
    try:  # checked here once, even when worker processes load their own copies
        predictor = load_predictor(args)
    except UserError as e:
        _parser().exit(EXIT_USER_ERROR, f"Error: {e}\n")
    log.info(
        "Serving %s on http://%s:%d (docs at /docs), %d worker process%s, %d model threads each",
        args.ckpt, args.host, args.port, args.workers, "es" if args.workers > 1 else "",
        args.threads,
    )  # fmt: skip
    if args.workers == 1:
        app = create_app(predictor, args.max_upload_mb, args.max_batch, checkpoint=str(args.ckpt))
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
        return
    del predictor  # each worker loads its own
    os.environ[_WORKER_ENV] = json.dumps({**vars(args), "from_env": sorted(args.from_env)})
    uvicorn.run(
        "cxrlab.inference.service:worker_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
        # a worker imports torch and loads its model before it answers the supervisor's ping
        # (uvicorn's default of 5 s had it killed and restarted while loading, measured)
        timeout_worker_healthcheck=WORKER_START_S,
    )
