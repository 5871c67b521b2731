"""Transfer-learning comparison on the phantom: head-only vs staged vs full fine-tuning.

    python benchmarks/finetune_policies.py [--source RUN_FOLDER] [--out finetune_policies]

No pretrained CXR weights can be downloaded here, so the "pretrained" model is made here too:
a ResNet18 trained on a *source* phantom (other patients, generator seed 1, the 3-class
normal / bacterial / viral task, 660 balanced images). Each policy then trains on a small *target*
set (seed 0, binary, 240 balanced images) from that trunk (`model.init_from`), against the
same network from scratch. Reported: test AUROC (95% patient-bootstrap CI), seconds per
training epoch, trainable parameters. Writes benchmarks/results/<--out>.json (finetune_policies).
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
from common import BENCH, save, train_py  # noqa: E402

COMMON = [
    "model=resnet18",
    "data.preprocess.size=64",
    "logger=csv",
    "callbacks.progress_bar=null",
    "evaluation.bootstrap=500",
    "data.num_workers=0",
]
TARGET = [
    "data.source.seed=0",
    "data.source.num_patients=400",
    "data.dataset_size=240",
    "trainer.max_epochs=10",
    "callbacks.early_stopping.patience=10",
    "model.optimizer.lr=1e-3",
]
POLICIES = {
    "scratch_full": [],
    "pretrained_head": ["model.finetune.policy=head", "model.optimizer.lr=3e-3"],
    "pretrained_staged": [
        "model.finetune.policy=staged",
        "model.finetune.unfreeze_at_epoch=3",
        "model.finetune.unfreeze_blocks=all",
        "model.finetune.backbone_lr_scale=0.1",
    ],
    "pretrained_full": ["model.finetune.backbone_lr_scale=0.1"],
}


def train(run_dir: Path, overrides: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = train_py(
        *COMMON, *overrides, f"paths.data_dir={BENCH / 'finetune-data'}", f"hydra.run.dir={run_dir}"
    )
    wall = time.perf_counter() - t0
    log = (run_dir / "train.log").read_text()
    stamps = {}
    for key, pattern in (("start", "- Training"), ("end", "`Trainer.fit` stopped")):
        line = next(ln for ln in log.splitlines() if pattern in ln)
        stamps[key] = datetime.strptime(
            re.search(r"\[(.*?)\]", line).group(1), "%Y-%m-%d %H:%M:%S,%f"
        )
    logged = pd.read_csv(run_dir / "csv" / "metrics.csv")
    epochs = 1 + int(logged.dropna(subset=["train/loss_epoch"])["epoch"].max())  # fit epochs
    report = json.loads((run_dir / "report" / "metrics.json").read_text())
    auroc = report["metrics"].get("auroc") or report["metrics"]["macro"]["auroc"]
    trainable = re.search(r"Trainable params: ([\d.]+ \w?)", proc.stdout + proc.stderr)
    return {
        "test_auroc": round(auroc["value"], 4),
        "test_auroc_ci95": [round(v, 4) for v in auroc["ci95"]],
        "epochs": epochs,
        "s_per_epoch": round((stamps["end"] - stamps["start"]).total_seconds() / epochs, 1),
        "wall_s": round(wall, 1),
        "trainable_params": trainable.group(1) if trainable else None,
    }


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", help="reuse this source run folder (skips the source training)")
    ap.add_argument("--out", default="finetune_policies", help="benchmarks/results/<out>.json")
    args = ap.parse_args()
    out = BENCH / f"finetune-{time.strftime('%Y%m%d-%H%M%S')}"
    source = Path(args.source) if args.source else out / "source"
    results = {}
    if args.source:
        results["source"] = {"run": str(source), "reused": True}
    else:
        results["source"] = train(
            source,
            [
                "data.task=multiclass",
                "data.source.seed=1",
                "data.source.num_patients=500",
                "data.dataset_size=660",
                "trainer.max_epochs=12",
            ],
        )
    ckpt = source / "checkpoints" / "best.ckpt"
    for name, extra in POLICIES.items():
        init = [] if name.startswith("scratch") else [f"model.init_from={ckpt}"]
        results[name] = train(out / name, [*TARGET, *init, *extra])
        print(name, results[name], flush=True)
    save(
        args.out,
        {
            "common": COMMON + TARGET,
            "policies": {k: POLICIES.get(k) for k in results},
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
