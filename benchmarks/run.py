"""cxrlab benchmarks, every one from this command:

    python benchmarks/run.py                  # data, train, memory (what `make bench` runs)
    python benchmarks/run.py --list           # every benchmark, with what it measures
    python benchmarks/run.py <name> [args]    # one of them, e.g. serve_latency --requests 200

The other benchmarks are scripts of their own in this folder (their results also land in
benchmarks/results/, their tables in docs/benchmarks.md); this command runs them with the same
arguments. `python benchmarks/tables.py` then rewrites docs/benchmarks.md's generated tables
from benchmarks/results/.

Each benchmark runs its sides in one process (memory: one subprocess per size, for clean peak
RSS), excludes warm-up, reports medians of several repeats, prints a table and writes
`benchmarks/results/<name>.json` with every figure and the ratio, the machine and the date.

1. data: images/s delivered to the model (decoded, resized, augmented, normalized) from the same
   2,000 full-size phantom files (half PNG, half JPEG, 1000-1400 px): (a) the original systems' (000-004)
   pipeline (PIL open + resize + per-sample torchvision transforms, DataLoader with 2 workers)
   vs (b) cxrlab's (uint8 cache + batched augmentation); the one-time cache build is reported
   separately.
2. train: images/s of full training epochs through Lightning (cache, augmentation, metrics)
   vs the same model's optimizer steps on random tensors already in memory (the ceiling).
3. memory: peak RSS of a training epoch on 2,000 vs 20,000 cached images.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import BENCH, ROOT, save  # noqa: F401  (shared by every benchmark)

SIZE, BATCH = 224, 32


# ------------------------------------------------------------------------------------------
# 1. data path


def bench_files() -> list[str]:
    import cv2

    from cxrlab.data import phantom

    root = BENCH / "files"
    cfg = phantom.PhantomConfig(num_patients=1000, seed=7, width_range=(1000, 1400))
    phantom.generate(root, cfg)
    jpegs = sorted(str(p) for p in (root / "chest_xray").rglob("*.jpeg"))[:2000]
    files = []
    for i, p in enumerate(jpegs):
        if i % 2:
            png = Path(p).with_suffix(".png")
            if not png.exists():
                cv2.imwrite(
                    str(png), cv2.imread(p, cv2.IMREAD_GRAYSCALE), [cv2.IMWRITE_PNG_COMPRESSION, 1]
                )
            files.append(str(png))
        else:
            files.append(p)
    return files


class OriginalPipeline(torch.utils.data.Dataset):
    """What the original systems did: PIL decode + resize + per-sample torchvision transforms."""

    def __init__(self, files):
        from torchvision import transforms as T

        self.files = files
        self.tf = T.Compose(
            [
                T.Resize((SIZE, SIZE)),
                T.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1), shear=5),
                T.RandomHorizontalFlip(0.5),
                T.ColorJitter(brightness=0.1, contrast=0.15),
                T.ToTensor(),
                T.Normalize([0.5], [0.25]),
            ]
        )

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.tf(im.convert("L")), 0


def epoch_rate(loader, step=lambda b: b) -> float:
    """Images/s over one pass, the first two batches (warm-up, worker start) excluded."""
    n, t0 = 0, None
    for i, batch in enumerate(loader):
        step(batch)
        if i == 1:
            t0 = time.perf_counter()
        elif i > 1:
            n += len(batch[0])
    return n / (time.perf_counter() - t0)


def bench_data(repeats: int = 3) -> dict:
    from cxrlab.data.augment import AugmentConfig, BatchAugment
    from cxrlab.data.cache import build_cache
    from cxrlab.data.datamodule import CachedImages
    from cxrlab.data.preprocess import PreprocessSpec
    from cxrlab.models.backbones import XRV_SPEC

    files = bench_files()
    original = torch.utils.data.DataLoader(
        OriginalPipeline(files), batch_size=BATCH, shuffle=True, num_workers=2
    )
    cache_dir = BENCH / "cache"
    t = time.perf_counter()
    cache = build_cache(files, PreprocessSpec(size=SIZE), cache_dir, workers=2)
    build_s = time.perf_counter() - t
    n = len(files)
    ds = CachedImages(cache, np.arange(n), np.zeros(n, int))
    ours = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0)
    aug = BatchAugment(
        AugmentConfig(
            rotation=10,
            scaling=0.1,
            shear=5,
            translation=0.06,
            crop_scale=0.85,
            brightness=0.08,
            contrast=0.15,
            gamma=0.2,
            noise=0.02,
        )
    )

    def on_device(batch):  # what CXRClassifier.on_after_batch_transfer does for training
        return XRV_SPEC.normalize(aug(batch[0]))

    a = [epoch_rate(original) for _ in range(repeats)]
    b = [epoch_rate(ours, on_device) for _ in range(repeats)]
    ra, rb = statistics.median(a), statistics.median(b)
    print(
        f"\n| pipeline | images/s (median of {repeats}) |\n| --- | --- |\n"
        f"| original (PIL + per-sample transforms, 2 workers) | {ra:.1f} |\n"
        f"| cxrlab (uint8 cache + batched augmentation) | {rb:.1f} |\n"
        f"ratio {rb / ra:.1f}x; one-time cache build {build_s:.1f} s for {n} files"
    )
    return {
        "files": n,
        "size": SIZE,
        "batch": BATCH,
        "original_img_s": a,
        "cxrlab_img_s": b,
        "original_median": ra,
        "cxrlab_median": rb,
        "ratio": rb / ra,
        "cache_build_s": build_s,
        "cache_build_img_s": n / build_s,
    }


# ------------------------------------------------------------------------------------------
# 2. training throughput vs ceiling


def bench_train(backbone: str = "resnet18", size: int = 128, repeats: int = 5) -> dict:
    import pytorch_lightning as pl

    from cxrlab.data import phantom
    from cxrlab.data.datamodule import CXRDataModule
    from cxrlab.models.module import CXRClassifier

    root = BENCH / "train_phantom"
    phantom.generate(root, phantom.PhantomConfig(num_patients=240, seed=5))
    aug = {
        "rotation": 10,
        "scaling": 0.1,
        "translation": 0.06,
        "brightness": 0.08,
        "contrast": 0.15,
        "gamma": 0.2,
        "noise": 0.02,
    }
    dm = CXRDataModule(
        source={"name": "kaggle_pneumonia", "root": str(root)},
        split={"ratios": {"train": 0.8, "val": 0.1, "test": 0.1}},
        preprocess={"size": size},
        batch_size=BATCH,
        # no loader workers without a GPU: memmap reads are cheap, and workers would compete
        # with the model for the same two cores
        num_workers=0 if not torch.cuda.is_available() else 2,
        cache_dir=str(BENCH / "cache"),
        augment=aug,
    )
    dm.setup()
    n_train = len(dm.dataset("train")) // BATCH * BATCH
    model = CXRClassifier(
        backbone,
        dm.classes,
        dm.class_counts(),
        dm.preprocess.to_dict(),
        pretrained="false",
        augment=aug,
    )

    class EpochTimer(pl.Callback):
        def __init__(self):
            self.times = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self.t)

    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=repeats + 1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[timer],
        accelerator="auto",
        devices=1,
    )
    trainer.fit(model, datamodule=dm)
    pipeline = [n_train / t for t in timer.times[1:]]  # epoch 0 is warm-up

    net = model.net
    net.train()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    dev = next(net.parameters()).device
    x = torch.randn(BATCH, model.input_spec.channels, size, size, device=dev)
    y = torch.randint(0, 2, (BATCH,), device=dev)
    steps = n_train // BATCH
    ceiling = []
    for r in range(repeats + 1):
        t = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if r:
            ceiling.append(steps * BATCH / (time.perf_counter() - t))
    p, c = statistics.median(pipeline), statistics.median(ceiling)
    print(
        f"\n| {backbone} {size} px, batch {BATCH} | images/s |\n| --- | --- |\n"
        f"| full training epoch (cache, augmentation, Lightning) | {p:.1f} |\n"
        f"| ceiling (random tensors in memory) | {c:.1f} |\nratio {p / c:.3f}"
    )
    return {
        "backbone": backbone,
        "size": size,
        "batch": BATCH,
        "train_images": n_train,
        "pipeline_img_s": pipeline,
        "ceiling_img_s": ceiling,
        "pipeline_median": p,
        "ceiling_median": c,
        "ratio": p / c,
    }


# ------------------------------------------------------------------------------------------
# 3. memory


def fake_store(n: int, size: int) -> Path:
    """A finished cache of ``n`` random images, written directly (decoding is not measured)."""
    folder = BENCH / "memstore" / f"{n}x{size}"
    if not (folder / "meta.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        mm = np.memmap(folder / "images.u8", np.uint8, "w+", shape=(n, size, size))
        rng = np.random.default_rng(0)
        for i in range(0, n, 1000):
            mm[i : i + 1000] = rng.integers(0, 255, (min(1000, n - i), size, size), np.uint8)
        mm.flush()
        meta = {
            "paths": [f"img{i}.png" for i in range(n)],
            "unreadable": {},
            "spec": {"size": size, "aspect": "crop", "normalization": "none"},
        }
        (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def memory_child(n: int, size: int = 64) -> None:
    """One training epoch over ``n`` cached images; prints peak RSS in MB."""
    from cxrlab.data.augment import AugmentConfig, BatchAugment
    from cxrlab.data.cache import ImageCache
    from cxrlab.data.datamodule import CachedImages
    from cxrlab.models.backbones import build_backbone

    cache = ImageCache(fake_store(n, size))
    rng = np.random.default_rng(0)
    ds = CachedImages(cache, np.arange(n), rng.integers(0, 2, n))
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=2)
    net, spec, _ = build_backbone("resnet18", 2, pretrained="false")
    opt = torch.optim.SGD(net.parameters(), 0.01)
    aug = BatchAugment(AugmentConfig(rotation=10, brightness=0.1))
    for x, y, _ in loader:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(spec.normalize(aug(x))), y).backward()
        opt.step()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"images": n, "peak_rss_mb": rss, "peak_worker_rss_mb": kids}))


def bench_memory() -> dict:
    out = {}
    for n in (2000, 20000):
        fake_store(n, 64)
        proc = subprocess.run(
            [sys.executable, __file__, "_memory_child", str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    a, b = out[2000], out[20000]
    print(
        f"\n| cached images (64 px) | peak RSS main (MB) | peak RSS worker (MB) |\n| --- | --- | --- |\n"
        f"| 2,000 | {a['peak_rss_mb']:.0f} | {a['peak_worker_rss_mb']:.0f} |\n"
        f"| 20,000 | {b['peak_rss_mb']:.0f} | {b['peak_worker_rss_mb']:.0f} |\n"
        f"ratio {b['peak_rss_mb'] / a['peak_rss_mb']:.2f} (main process)"
    )
    return {
        "size": 64,
        "runs": out,
        "ratio_main": b["peak_rss_mb"] / a["peak_rss_mb"],
        "store_mb_20000": 20000 * 64 * 64 / 2**20,
    }


HERE = Path(__file__).resolve().parent
SECTIONS = {"data": bench_data, "train": bench_train, "memory": bench_memory}


def scripts() -> dict[str, str]:
    """Every benchmark script in this folder -> the first line of its docstring."""
    import ast

    out = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem in ("run", "common", "tables"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        out[path.stem] = doc.splitlines()[0] if doc else ""
    return out


def main(argv: list[str]) -> None:
    if argv[:1] == ["_memory_child"]:
        memory_child(int(argv[1]))
        return
    os.environ.setdefault("CXRLAB_ROOT", str(ROOT))
    if argv[:1] in (["--list"], ["-l"]):
        about = {
            "data": "images/s delivered to the model: the original systems' pipeline vs cxrlab's",
            "train": "training images/s through Lightning vs the model-only ceiling",
            "memory": "peak RSS of a training epoch on 2,000 vs 20,000 cached images",
        }
        for name in SECTIONS:
            print(f"{name:20s} {about[name]}")
        for name, line in scripts().items():
            print(f"{name:20s} {line}")
        return
    if argv and argv[0] in scripts():
        import runpy

        sys.argv = [str(HERE / f"{argv[0]}.py"), *argv[1:]]
        runpy.run_path(sys.argv[0], run_name="__main__")
        return
    for name in argv or list(SECTIONS):
        if name not in SECTIONS:
            raise SystemExit(f"{name!r}: not a benchmark; python benchmarks/run.py --list")
        save(name, SECTIONS[name]())


if __name__ == "__main__":
    main(sys.argv[1:])
