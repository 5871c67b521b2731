"""The GPU check: one prepared script for a machine with a GPU, in one call of under 8 minutes.

    python benchmarks/gpu_check.py               # on a GPU machine: writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --reduced     # tiny sizes on any machine (the test suite runs it)

It measures, on the phantom (no dataset, no download, no internet needed):
1. recipes: for every recipe in configs/experiment/, training images/s through Lightning at the
   recipe's own input size, batch size, precision (``${cxrlab.precision:...}``: bf16-mixed on
   the GPU), channels_last, augmentation and fine-tuning policy, against the same model's
   ceiling (optimizer steps on random tensors already on the device, same precision and memory
   format), and the peak GPU memory of each;
2. augment: GPU batch augmentation (augment.device=batch) against the CPU route
   (augment.device=cpu: albumentations per image in the loader workers), same ranges;
3. ddp: ``python train.py trainer=ddp trainer.devices=1`` end to end (fit + test) on the GPU;
4. tests: ``pytest -m gpu`` (the tests that need CUDA; skipped elsewhere).
Models start from random weights (``model.pretrained=false``): throughput does not depend on them,
and the device machine has no internet. docs/benchmarks.md has the figures and the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
from common import BENCH, machine, save, train_py  # noqa: E402

RECIPES = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


class StepTimer(pl.Callback):
    """Wall time at the end of every training step (after the GPU finished it)."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def compose(recipe: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import cxrlab  # noqa: F401  (the config resolvers)

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(
            "train.yaml", overrides=[f"experiment={recipe}", *overrides], return_hydra_config=False
        )


def recipe_parts(recipe: str, phantom: Path, cache: Path, overrides: list[str]):
    """The recipe's data module (its preprocessing, batch, sampler, augmentation; the phantom in
    the Kaggle layout as the images) and its model, built as train.py builds them."""
    from omegaconf import open_dict

    from cxrlab.config import validate
    from cxrlab.utils.instantiate import instantiate_data, instantiate_model

    cfg = compose(
        recipe,
        [
            "model.pretrained=false",
            "data.dataset_size=null",
            f"paths.data_dir={cache.parent}",
            "paths.output_dir=.",
            *overrides,
        ],
    )
    with open_dict(cfg):
        cfg.data.source = {"name": "kaggle_pneumonia", "root": str(phantom)}
        cfg.data.cache_dir = str(cache)
    settings = validate(cfg)
    dm = instantiate_data(cfg, settings)
    dm.setup()
    return cfg, dm, instantiate_model(cfg.model, dm, settings)


def pipeline_rate(cfg, dm, model, steps: int, warm: int) -> tuple[float, float]:
    """(images/s of training steps through Lightning after ``warm`` steps, peak GPU GiB)."""
    timer = StepTimer()
    trainer = pl.Trainer(
        max_steps=warm + steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        accelerator=str(cfg.trainer.accelerator),
        devices=1,
        precision=str(cfg.trainer.precision),
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, datamodule=dm)
    t = timer.times
    rate = (len(t) - warm) * int(cfg.data.batch_size) / (t[-1] - t[warm - 1])
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return rate, peak


def ceiling_rate(cfg, model, steps: int, warm: int) -> float:
    """The same model's optimizer steps on random tensors on its device (no data, no Lightning):
    same batch, input size, precision and memory format."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = model.to(dev).train()
    batch, size = int(cfg.data.batch_size), int(cfg.data.preprocess.size)
    x = torch.rand(batch, model.input_spec.channels, size, size, device=dev)
    if model.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, model.num_classes, (batch,), device=dev)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, 1e-4)
    precision = str(cfg.trainer.precision)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    times = []
    for _ in range(warm + steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    return steps * batch / (times[-1] - times[warm - 1])


def check_recipes(phantom: Path, cache: Path, tiny: list[str], steps: int, warm: int) -> list:
    rows = []
    for recipe in RECIPES:
        t0 = time.perf_counter()
        cfg, dm, model = recipe_parts(recipe, phantom, cache, tiny)
        rate, peak = pipeline_rate(cfg, dm, model, steps, warm)
        ceiling = ceiling_rate(cfg, model, steps, warm)
        row = {
            "recipe": recipe,
            "backbone": str(cfg.model.backbone),
            "size": int(cfg.data.preprocess.size),
            "batch": int(cfg.data.batch_size),
            "precision": str(cfg.trainer.precision),
            "augment_device": str(cfg.augment.device),
            "finetune": str(cfg.model.finetune.policy),
            "train_img_s": rate,
            "ceiling_img_s": ceiling,
            "ratio": rate / ceiling,
            "peak_gpu_gib": peak,
            "seconds": time.perf_counter() - t0,
        }
        print(
            f"{recipe:32s} {row['size']:4d} px  batch {row['batch']:4d}  "
            f"{rate:8.1f} img/s  ceiling {ceiling:8.1f}  ratio {rate / ceiling:.2f}  "
            f"peak {peak:.1f} GiB",
            flush=True,
        )
        rows.append(row)
        del model, dm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def check_augment(phantom: Path, cache: Path, tiny: list[str], steps: int, warm: int) -> dict:
    """resnet18_pneumonia with the xray preset's ranges, augmented on the GPU vs in the workers."""
    out = {}
    for device in ("batch", "cpu"):
        over = ["augment=xray", f"augment.device={device}", *tiny]
        cfg, dm, model = recipe_parts("resnet18_pneumonia", phantom, cache, over)
        out[device], _ = pipeline_rate(cfg, dm, model, steps, warm)
        print(f"augment.device={device:10s} {out[device]:8.1f} img/s", flush=True)
    out["ratio_batch_over_cpu"] = out["batch"] / out["cpu"]
    return out


def check_ddp(reduced: bool, work: Path, phantom: Path) -> dict:
    """train.py with trainer=ddp on one device, end to end, as a user runs it."""
    trainer = (
        ["trainer=ddp_cpu", "trainer.devices=1"]
        if reduced or not torch.cuda.is_available()
        else ["trainer=ddp", "trainer.devices=1", "trainer.accelerator=gpu"]
    )
    t0 = time.perf_counter()
    try:
        train_py(
            "experiment=resnet18_pneumonia",
            "debug=default",
            f"data.source.root={phantom}",
            "data.dataset_size=null",
            "model.pretrained=false",
            *trainer,
            "evaluation.bootstrap=20",
            f"paths.data_dir={work / 'data'}",
            f"paths.log_dir={work / 'logs'}",
            f"hydra.run.dir={work / 'ddp_run'}",
        )
        ok, error = True, None
    except RuntimeError as e:
        ok, error = False, str(e)[-2000:]
    metrics = work / "ddp_run" / "test_metrics.json"
    return {
        "command": "train.py experiment=resnet18_pneumonia debug=default " + " ".join(trainer),
        "ok": ok and metrics.is_file(),
        "seconds": time.perf_counter() - t0,
        "error": error,
    }


def check_tests() -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"returncode": proc.returncode, "summary": last}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reduced", action="store_true", help="tiny sizes: a CPU smoke run")
    ap.add_argument("--work", type=Path, default=BENCH / "gpu_check", help="phantom and caches")
    ap.add_argument("--skip", nargs="*", default=[], choices=["augment", "ddp", "tests"])
    ap.add_argument(
        "--out", type=Path, help="the JSON (default: benchmarks/results/gpu_check.json)"
    )
    args = ap.parse_args(argv)

    from cxrlab.data import phantom

    t0 = time.perf_counter()
    reduced = args.reduced or not torch.cuda.is_available()
    if reduced:
        # tiny images and batches: every code path, no meaningful figure
        tiny = ["data.preprocess.size=32", "data.batch_size=4", "data.num_workers=0"]
        steps, warm, patients = 2, 1, 24
    else:
        tiny, steps, warm, patients = [], 30, 5, 300
    root = args.work / f"phantom{patients}"
    phantom.generate(root, phantom.PhantomConfig(num_patients=patients, seed=11), progress=False)
    cache = args.work / "cache"
    result = {"mode": "reduced" if reduced else "full", "steps": steps, "warmup_steps": warm}
    result["recipes"] = check_recipes(root, cache, tiny, steps, warm)
    if "augment" not in args.skip:
        result["augment"] = check_augment(root, cache, tiny, steps, warm)
    if "ddp" not in args.skip:
        result["ddp"] = check_ddp(reduced, args.work, root)
    if "tests" not in args.skip:
        result["tests"] = check_tests()
    result["seconds"] = time.perf_counter() - t0
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine(), **result}, indent=2))
    else:
        save("gpu_check" + ("_reduced" if reduced else ""), result, quiet=("recipes",))
    return result


if __name__ == "__main__":
    main()
