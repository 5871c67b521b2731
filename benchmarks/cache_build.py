"""Cache build speed for full-size radiographs, per file format: `python benchmarks/cache_build.py`.

The files are what the public datasets hold, at their sizes: NIH-like 8-bit PNG at 1024 px,
16-bit PNG at 2048x2500, Kaggle-pneumonia-like JPEG at 1500x1800, RSNA-like 8-bit DICOM at
1024 px, and SIIM-like 12-bit DICOM at 2500x3000 uncompressed, RLE, JPEG-LS and JPEG 2000
(anatomy from the phantom, upscaled, with noise so compression has real work). Each format's
images go through ``build_cache`` (decode, scale, crop, resize to 224 px, uint8 store) with one
worker process and with two; the baseline of the ratio is the one-worker build, run side by side.
Writes benchmarks/results/cache_build.json.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from common import save  # noqa: E402

from cxrlab.data import phantom  # noqa: E402
from cxrlab.data.cache import build_cache  # noqa: E402
from cxrlab.data.dicomwrite import write_dicom  # noqa: E402
from cxrlab.data.preprocess import PreprocessSpec  # noqa: E402

N = 32  # images per format
FORMATS = {  # name: (height, width, bits, writer)
    "png8_1024": (1024, 1024, 8, "png"),
    "png16_2500x2048": (2500, 2048, 16, "png"),
    "jpeg_1800x1500": (1800, 1500, 8, "jpeg"),
    "dicom8_1024": (1024, 1024, 8, "explicit"),
    "dicom12_3000x2500": (3000, 2500, 12, "explicit"),
    "dicom12_rle": (3000, 2500, 12, "rle"),
    "dicom12_jpegls": (3000, 2500, 12, "jpegls"),
    "dicom12_jpeg2000": (3000, 2500, 12, "jpeg2000"),
}


def make_files(tmp: Path, wanted: list[str]) -> dict[str, list[str]]:
    src = tmp / "phantom"
    phantom.generate(src, phantom.PhantomConfig(num_patients=16, seed=1, workers=2), progress=False)
    bases = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in sorted(src.rglob("*.jpeg"))[:N]]
    rng = np.random.default_rng(0)
    out: dict[str, list[str]] = {}
    for name, (h, w, bits, kind) in FORMATS.items():
        if name not in wanted:
            continue
        files = []
        for i, base in enumerate(bases):
            img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255
            img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1) * (2**bits - 1)
            px = img.astype(np.uint8 if bits == 8 else np.uint16)
            if kind in ("png", "jpeg"):
                f = tmp / name / f"{i}.{'png' if kind == 'png' else 'jpg'}"
                f.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(f), px, [cv2.IMWRITE_JPEG_QUALITY, 95] if kind == "jpeg" else [])
            else:
                f = write_dicom(tmp / name / f"{i}.dcm", px, bits_stored=bits, syntax=kind)
            files.append(str(f))
        out[name] = files
    return out


def timed_build(files: list[str], workers: int, cache_dir: Path) -> float:
    shutil.rmtree(cache_dir, ignore_errors=True)
    t = time.perf_counter()
    cache = build_cache(files, PreprocessSpec(size=224), cache_dir, workers=workers, progress=False)
    dt = time.perf_counter() - t
    assert not cache.unreadable, cache.unreadable
    return dt


def main() -> None:
    import argparse

    import cxrlab.data.cache as cache_mod

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", nargs="*", default=list(FORMATS), choices=list(FORMATS))
    wanted = ap.parse_args().formats

    rows = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        files = make_files(tmp, wanted)
        # the build uses a pool only above 64 files; N is smaller, so lower the bar here
        cache_mod.POOL_MIN_FILES = 8
        for name, paths in files.items():
            if name not in wanted:
                continue
            mb = sum(Path(p).stat().st_size for p in paths) / 2**20
            res = {}
            for workers in (1, 2):  # side by side, 3 repeats each, medians
                times = [timed_build(paths, workers, tmp / "cache") for _ in range(3)]
                res[workers] = statistics.median(times)
            rows[name] = {
                "files": len(paths),
                "mb_on_disk": round(mb, 1),
                "images_per_s_1_worker": round(len(paths) / res[1], 1),
                "images_per_s_2_workers": round(len(paths) / res[2], 1),
                "ratio_2_to_1": round(res[1] / res[2], 2),
            }
            print(name, rows[name], flush=True)
    save("cache_build" if len(wanted) == len(FORMATS) else "cache_build_" + "_".join(wanted),
         {"size": 224, "formats": rows})  # fmt: skip


if __name__ == "__main__":
    main()
