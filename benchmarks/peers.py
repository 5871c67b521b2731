"""cxrlab's data path against MONAI's and torchxrayvision's, same files, side by side.

    pip install -e .[bench]                       # MONAI (a benchmark-only extra)
    python benchmarks/run.py peers                # 2,000 files, 3 rounds; then 20,000, 1 round
    python benchmarks/run.py peers --files 2000 --rounds 1

The same full-size phantom radiographs as the ``data`` benchmark (about 2,000, half PNG, half
JPEG, 1000-1400 px; the 20,000-file variant links each of them ten times under other names, so
every file is still decoded) go through each pipeline to normalized float batches (32, 1, 224,
224) in torchxrayvision's range [-1024, 1024] on the model's device (this machine: the CPU):

- ``monai_cache``: MONAI's ``CacheDataset`` (cache_rate=1, copy_cache=False, 2 caching threads)
  over LoadImage, EnsureChannelFirst, the central square (a Lambda) + Resize, intensity
  scaling and EnsureType(track_meta=False), then the random transforms each epoch; the loader
  MONAI's fast-training tutorial uses for cached data (``ThreadDataLoader``, num_workers=0), and
  a ``DataLoader`` with 2 worker processes for the steady epochs too (the faster one counts);
- ``monai_persistent``: ``PersistentDataset`` (the deterministic part cached on disk as .pt
  files) with a ``DataLoader`` of 2 workers;
- ``xrv``: torchxrayvision's way, no cache: skimage ``imread``, ``xrv.datasets.normalize``,
  ``XRayCenterCrop`` + ``XRayResizer(224)`` (its faster cv2 engine), per-sample torchvision
  augmentation, a ``DataLoader`` with 2 workers;
- ``cxrlab``: the uint8 cache (memory-mapped, built by ``build_cache``), batches of rows,
  ``BatchAugment`` and the backbone's normalization (what training does).

Augmentation: cxrlab's ``xray`` preset on every side (rotation 10 deg, zoom 0.9-1.1, shear 5 deg,
translation 6 %, random resized crop from 85 % of the area, additive brightness 0.08, contrast
0.15 around the mean, gamma exp(+-0.2), Gaussian noise with sigma up to 0.02; no flips, as the
preset). MONAI: RandAffine (crop folded into its zoom range, as cxrlab folds it), RandShiftIntensity,
RandScaleIntensityFixedMean, RandAdjustContrast, RandGaussianNoise. torchvision has no additive
brightness nor noise with a random sigma: those two are one tensor line each on the xrv side.

Each pipeline runs in a process of its own (clean peak RSS; caches removed before), the order
alternating between rounds. Measured: the first epoch from nothing (cache building included) in
images/s, steady epochs in images/s (the first two batches of each excluded, as in ``data``),
peak RSS of the process and of its largest child (loader workers), disk used by the cache.
Medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import BENCH, RESULTS, ROOT, save

SIZE, BATCH = 224, 32
PIPELINES = ("monai_cache", "monai_persistent", "xrv", "cxrlab")
SCRATCH = BENCH / "peers"


def preset() -> dict:
    """cxrlab's xray augmentation preset, as configs/augment/xray.yaml has it."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "augment" / "xray.yaml").read_text())
    cfg.pop("defaults", None)
    return cfg


def files(n: int) -> list[str]:
    """The data benchmark's files; more than there are: hard links under other names."""
    from run import bench_files

    base = bench_files()
    if n <= len(base):
        return base[:n]
    out = []
    for k in range(math.ceil(n / len(base))):
        folder = SCRATCH / f"links{n}" / f"copy{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for p in base:
            link = folder / Path(p).name
            if not link.exists():
                os.link(p, link)
            out.append(str(link))
    return out[:n]


def du_mb(path: Path) -> float:
    if not path.exists():
        return 0.0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def epoch_rate(batches, limit: int | None = None) -> float:
    """Images/s over one pass (at most ``limit`` batches), the first two batches excluded."""
    n, t0 = 0, None
    for i, x in enumerate(batches):
        assert x.shape[1:] == (1, SIZE, SIZE) and x.dtype == torch.float32, x.shape
        if i == 1:
            t0 = time.perf_counter()
        elif i > 1:
            n += len(x)
        if limit and i + 1 >= limit:
            break
    return n / (time.perf_counter() - t0)


def first_epoch(build, batches_of) -> tuple[float, object]:
    """Seconds from nothing to the end of the first whole epoch, and what ``build`` made."""
    t = time.perf_counter()
    made = build()
    for x in batches_of(made):
        assert x.shape[1:] == (1, SIZE, SIZE)
    return time.perf_counter() - t, made


# ------------------------------------------------------------------------------------------
# the pipelines


def square(x):
    """The central square of a (C, H, W) image: the crop cxrlab and XRayCenterCrop do."""
    h, w = x.shape[-2:]
    m = min(h, w)
    return x[..., (h - m) // 2 : (h - m) // 2 + m, (w - m) // 2 : (w - m) // 2 + m]


def monai_transforms(aug: dict):
    import monai.transforms as mt

    k = ["img"]
    deterministic = [
        mt.LoadImaged(k, reader="PILReader", image_only=True),
        mt.EnsureChannelFirstd(k),
        mt.Lambdad(k, square),  # MONAI has no "shortest side" resize nor a square crop
        mt.Resized(k, spatial_size=(SIZE, SIZE)),
        mt.ScaleIntensityRanged(k, a_min=0, a_max=255, b_min=0, b_max=1),
        mt.EnsureTyped(k, dtype=torch.float32, track_meta=False),
    ]
    zoom_hi = (1 + aug["scaling"]) / math.sqrt(aug["crop_scale"])
    rand = [
        mt.RandAffined(
            k,
            prob=1.0,
            rotate_range=(math.radians(aug["rotation"]),),
            shear_range=(math.tan(math.radians(aug["shear"])), 0.0),
            translate_range=(aug["translation"] * SIZE,) * 2,
            scale_range=((-aug["scaling"], zoom_hi - 1),) * 2,
            spatial_size=(SIZE, SIZE),
            cache_grid=True,
            padding_mode="zeros",
        ),
        mt.RandScaleIntensityFixedMeand(k, prob=1.0, factors=aug["contrast"]),
        mt.RandShiftIntensityd(k, prob=1.0, offsets=aug["brightness"]),
        mt.RandAdjustContrastd(
            k, prob=1.0, gamma=(math.exp(-aug["gamma"]), math.exp(aug["gamma"]))
        ),
        mt.RandGaussianNoised(k, prob=1.0, std=aug["noise"]),
        mt.ScaleIntensityRanged(k, a_min=0, a_max=1, b_min=-1024, b_max=1024),
        mt.EnsureTyped(k, dtype=torch.float32, track_meta=False),
    ]
    return mt.Compose(deterministic + rand)


def run_monai(paths: list[str], kind: str, steady: int, limit: int | None) -> dict:
    from monai.data import CacheDataset, DataLoader, PersistentDataset, ThreadDataLoader

    data = [{"img": p, "label": 0} for p in paths]
    tf = monai_transforms(preset())
    cache_dir = SCRATCH / "monai_persistent_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)

    def build():
        if kind == "monai_cache":
            return CacheDataset(data, tf, cache_rate=1.0, num_workers=2, copy_cache=False,
                                progress=False)  # fmt: skip
        return PersistentDataset(data, tf, cache_dir=cache_dir)

    def threads(ds):
        loader = ThreadDataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0)
        return (b["img"] for b in loader)

    def workers(ds):
        loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=2)
        return (b["img"] for b in loader)

    main = threads if kind == "monai_cache" else workers
    first_s, ds = first_epoch(build, main)
    out = {"first_epoch_s": first_s, "steady_img_s": [epoch_rate(main(ds), limit)
                                                      for _ in range(steady)]}  # fmt: skip
    if kind == "monai_cache":  # the other loader too; the faster counts
        out["steady_threadloader_img_s"] = out["steady_img_s"]
        out["steady_workers_img_s"] = [epoch_rate(workers(ds), limit) for _ in range(steady)]
        if statistics.median(out["steady_workers_img_s"]) > statistics.median(out["steady_img_s"]):
            out["steady_img_s"] = out["steady_workers_img_s"]
    out["cache_disk_mb"] = du_mb(cache_dir)
    return out


class XRVStyle(torch.utils.data.Dataset):
    """torchxrayvision's datasets' ``__getitem__`` for an image file, then per-sample
    torchvision augmentation (as its training script does, with the preset's ranges)."""

    def __init__(self, paths: list[str], aug: dict):
        import torchvision
        import torchxrayvision as xrv
        from torchvision.transforms import v2

        self.paths, self.aug = paths, aug
        self.xrv = xrv
        self.transform = torchvision.transforms.Compose(
            [xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(SIZE, engine="cv2")]
        )
        zoom_hi = (1 + aug["scaling"]) / math.sqrt(aug["crop_scale"])
        self.affine = v2.RandomAffine(
            degrees=aug["rotation"],
            translate=(aug["translation"],) * 2,
            scale=(1 - aug["scaling"], zoom_hi),
            shear=(-aug["shear"], aug["shear"]),
            fill=-1024.0,
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from skimage.io import imread
        from torchvision.transforms.v2 import functional as TF

        img = imread(self.paths[i])
        img = self.xrv.datasets.normalize(img, maxval=255, reshape=True)  # (1, H, W), +-1024
        img = torch.from_numpy(self.transform(img))
        img = self.affine(img)
        a = self.aug
        x = ((img + 1024) / 2048).clamp(0, 1)
        u = torch.rand(4)
        x = TF.adjust_contrast(x, 1 + (2 * u[0].item() - 1) * a["contrast"])
        x = (x + (2 * u[1].item() - 1) * a["brightness"]).clamp(0, 1)
        x = TF.adjust_gamma(x, math.exp((2 * u[2].item() - 1) * a["gamma"]))
        x = x + torch.randn_like(x) * (u[3].item() * a["noise"])
        return (x * 2048 - 1024).float(), 0


def run_xrv(paths: list[str], steady: int, limit: int | None) -> dict:
    def batches(ds):
        loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=2)
        return (x for x, _ in loader)

    first_s, ds = first_epoch(lambda: XRVStyle(paths, preset()), batches)
    return {
        "first_epoch_s": first_s,
        "steady_img_s": [epoch_rate(batches(ds), limit) for _ in range(steady)],
        "cache_disk_mb": 0.0,
    }


def run_cxrlab(paths: list[str], steady: int, limit: int | None) -> dict:
    from cxrlab.data.augment import AugmentConfig, BatchAugment
    from cxrlab.data.cache import build_cache
    from cxrlab.data.datamodule import CachedImages
    from cxrlab.data.preprocess import PreprocessSpec
    from cxrlab.models.backbones import XRV_SPEC

    cache_dir = SCRATCH / "cxrlab_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    aug = BatchAugment(AugmentConfig(**preset()))
    n = len(paths)

    def build():
        cache = build_cache(paths, PreprocessSpec(size=SIZE), cache_dir, workers=2,
                            progress=False)  # fmt: skip
        return CachedImages(cache, np.arange(n), np.zeros(n, int))

    def batches(ds):  # the training loader on a CPU (num_workers=0), then the model's hook
        loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0)
        return (XRV_SPEC.normalize(aug(x)) for x, _, _ in loader)

    first_s, ds = first_epoch(build, batches)
    return {
        "first_epoch_s": first_s,
        "steady_img_s": [epoch_rate(batches(ds), limit) for _ in range(steady)],
        "cache_disk_mb": du_mb(cache_dir),
    }


def watch_memory() -> dict:
    """Peaks of this process's anonymous and file-backed resident memory (/proc, every 20 ms):
    a memory-mapped cache's pages are file-backed (the kernel drops them under pressure),
    a cache of tensors in a list is anonymous."""
    import threading

    peaks = {"peak_anon_mb": 0.0, "peak_file_mb": 0.0}

    def sample():
        while True:
            try:
                status = Path("/proc/self/status").read_text().splitlines()
            except OSError:
                return
            for line in status:
                for key, field in (("RssAnon:", "peak_anon_mb"), ("RssFile:", "peak_file_mb")):
                    if line.startswith(key):
                        peaks[field] = max(peaks[field], int(line.split()[1]) / 1024)
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    return peaks


def child(kind: str, n: int, steady: int, limit: int | None) -> None:
    peaks = watch_memory()
    paths = files(n)
    if kind.startswith("monai"):
        out = run_monai(paths, kind, steady, limit)
    elif kind == "xrv":
        out = run_xrv(paths, steady, limit)
    else:
        out = run_cxrlab(paths, steady, limit)
    out["files"] = len(paths)
    out["first_epoch_img_s"] = len(paths) / out["first_epoch_s"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_child_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out.update(peaks)
    print(json.dumps(out))


# ------------------------------------------------------------------------------------------


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Medians over rounds per pipeline, and cxrlab's ratios to each peer."""
    med = statistics.median
    summary = {}
    for kind, rs in runs.items():
        summary[kind] = {
            key: med(x[key] for x in rs)
            for key in ("first_epoch_img_s", "peak_rss_mb", "peak_child_rss_mb",
                        "peak_anon_mb", "peak_file_mb", "cache_disk_mb")
            if all(key in x for x in rs)
        }  # fmt: skip
        summary[kind]["steady_img_s"] = med(med(x["steady_img_s"]) for x in rs)
    ours = summary["cxrlab"]
    for kind in summary:
        if kind != "cxrlab":
            peer = summary[kind]
            peer["cxrlab_steady_ratio"] = ours["steady_img_s"] / peer["steady_img_s"]
            peer["cxrlab_first_ratio"] = ours["first_epoch_img_s"] / peer["first_epoch_img_s"]
    return summary


def measure(n: int, rounds: int, steady: int, limit: int | None, pipelines=PIPELINES) -> dict:
    count = len(files(n))  # generated (and linked) once, outside every measurement
    runs: dict[str, list[dict]] = {p: [] for p in pipelines}
    for r in range(rounds):
        order = pipelines if r % 2 == 0 else pipelines[::-1]
        for kind in order:
            cmd = [sys.executable, __file__, "_child", kind, str(n), str(steady), str(limit or 0)]
            env = dict(os.environ, CXRLAB_ROOT=str(ROOT), PYTHONWARNINGS="ignore")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                raise RuntimeError(f"{kind} on {n} files failed:\n{proc.stderr[-3000:]}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[kind].append(got)
            print(f"  {n} files, round {r + 1}, {kind}: first epoch "
                  f"{got['first_epoch_img_s']:.0f} img/s, steady "
                  f"{statistics.median(got['steady_img_s']):.0f} img/s, "
                  f"peak RSS {got['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
    summary = summarize(runs)
    return {"files": count, "rounds": rounds, "steady_epochs": steady,
            "steady_batch_limit": limit, "summary": summary, "runs": runs}  # fmt: skip


def main(argv: list[str]) -> None:
    if argv[:1] == ["_child"]:
        kind, n, steady, limit = argv[1], int(argv[2]), int(argv[3]), int(argv[4]) or None
        torch.manual_seed(0)
        child(kind, n, steady, limit)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--rounds", type=int, default=3, help="rounds at the smallest size")
    ap.add_argument("--only", nargs="+", choices=PIPELINES,
                    help="measure these again and replace their runs in the last result")  # fmt: skip
    args = ap.parse_args(argv)
    try:
        import monai  # noqa: F401
    except ImportError:
        raise SystemExit("MONAI is a benchmark-only extra: pip install -e .[bench]") from None
    last = RESULTS / "peers.json"
    if args.only:
        result = json.loads(last.read_text())
        for key in ("benchmark", "machine", "date"):
            result.pop(key)
    else:
        result = {"size": SIZE, "batch": BATCH, "augment": preset(), "by_files": {}}
    for i, n in enumerate(sorted(args.files)):
        # the larger variant once, steady epochs over their first 120 batches (3,840 images)
        rounds, limit = (args.rounds, None) if i == 0 else (1, 120)
        got = measure(n, rounds, steady=2, limit=limit, pipelines=tuple(args.only or PIPELINES))
        if args.only:
            result["by_files"][str(n)]["runs"].update(got["runs"])
        else:
            result["by_files"][str(n)] = got
    for run in result["by_files"].values():
        run["summary"] = summarize(run["runs"])
    save("peers", result, quiet=("by_files",))


if __name__ == "__main__":
    main(sys.argv[1:])
