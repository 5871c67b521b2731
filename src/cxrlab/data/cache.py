"""The uint8 image store: every image decoded and preprocessed once, then memory-mapped.

A cache lives in ``<cache_dir>/<key>/`` where the key hashes the file list (path, size, mtime)
and the preprocessing spec, so a change to either builds a new one and an unchanged dataset is
reused by later runs and by every trial of a sweep. It is built into a temporary folder and
renamed into place only when complete, under a file lock: an interrupted build leaves nothing
that looks finished, and several processes (DDP ranks, parallel trials) build it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from filelock import FileLock

from cxrlab.data.imageio import UnreadableImageError
from cxrlab.data.preprocess import PreprocessSpec, load_preprocessed
from cxrlab.utils.progress import track

log = logging.getLogger(__name__)
POOL_MIN_FILES = 64  # fewer files are decoded in this process (a pool costs ~1 s to start)
CACHE_VERSION = 2  # 2: DICOM scaled by the header's range (torchxrayvision parity)


def cache_key(paths: list[str], spec: PreprocessSpec) -> str:
    h = hashlib.sha1()
    h.update(json.dumps({"v": CACHE_VERSION, "spec": spec.to_dict()}, sort_keys=True).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:  # a missing file: recorded as unreadable by the build, never a crash
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:16]


def _load(args: tuple[str, PreprocessSpec]) -> tuple[np.ndarray | None, str | None]:
    path, spec = args
    try:
        return load_preprocessed(path, spec), None
    except UnreadableImageError as e:
        return None, e.reason


class ImageCache:
    """A finished cache: ``images`` is an (N, S, S) uint8 memmap in the order of ``paths``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.paths: list[str] = meta["paths"]
        self.spec = PreprocessSpec(**meta["spec"])
        self.unreadable: dict[str, str] = meta["unreadable"]
        n, s = len(self.paths), self.spec.size
        self.images = np.memmap(self.folder / "images.u8", np.uint8, "r", shape=(n, s, s))

    def __len__(self) -> int:
        return len(self.paths)


def build_cache(
    paths: list[str],
    spec: PreprocessSpec,
    cache_dir: str | Path,
    workers: int = 2,
    progress: bool = True,
) -> ImageCache:
    """Return the cache for ``paths`` under ``spec``, building it if it does not exist yet.

    Unreadable files get an all-zero image and are listed in ``unreadable`` with their reason;
    the caller decides whether that is an error (``data.on_bad_file``).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, spec)
    folder = cache_dir / key
    with FileLock(str(cache_dir / f"{key}.lock")):
        if (folder / "meta.json").exists():
            return ImageCache(folder)
        tmp = cache_dir / f"{key}.building"
        if tmp.exists():
            log.warning("Removing an interrupted cache build at %s", tmp)
            shutil.rmtree(tmp)
        tmp.mkdir()
        n, s = len(paths), spec.size
        store = np.memmap(tmp / "images.u8", np.uint8, "w+", shape=(max(n, 1), s, s))
        unreadable: dict[str, str] = {}
        jobs = [(p, spec) for p in paths]
        log.info("Building the image cache (%d images at %d px) in %s", n, s, folder)
        if workers > 1 and n > POOL_MIN_FILES:
            with ProcessPoolExecutor(workers) as pool:
                results = pool.map(_load, jobs, chunksize=16)
                _fill(store, results, paths, unreadable, progress)
        else:
            _fill(store, map(_load, jobs), paths, unreadable, progress)
        store.flush()
        del store
        meta = {"paths": paths, "spec": spec.to_dict(), "unreadable": unreadable}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, folder)
    return ImageCache(folder)


def _fill(store, results, paths, unreadable, progress) -> None:
    for i, (img, reason) in enumerate(
        track(results, total=len(paths), description="cache", enabled=progress)
    ):
        if img is None:
            unreadable[paths[i]] = reason
        else:
            store[i] = img
