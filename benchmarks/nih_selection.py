"""Selecting the whole NIH ChestX-ray14 label file: multi-label against single-label.

    python benchmarks/nih_selection.py [--repeats 3]

torchxrayvision's wheel ships the real file (Data_Entry_2017_v2020: 112,120 images, 30,805
patients). Each side runs in its own fresh process per repeat (clean peak RSS): (a) the
multi-label task, all 14 findings: parse the labels, then the patient-grouped split stratified
over every finding (iterative stratification) and the leakage check; (b) the binary task
(Pneumonia vs the rest) through the single-label split, the baseline. Reports the median
seconds of each step, the process's peak RSS, and how far each finding's share of the test split
is from its target. Writes benchmarks/results/nih_selection.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import save

RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}


def child(side: str) -> dict:
    import numpy as np
    import torchxrayvision as xrv

    from cxrlab.data.selection import (
        assert_no_leakage,
        finding_matrix,
        multilabel_grouped_split,
        patient_grouped_split,
    )
    from cxrlab.data.sources import nih

    path = Path(xrv.__file__).parent / "data" / "Data_Entry_2017_v2020.csv.gz"
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if side == "multilabel":
        df, classes = nih.labels(path, task="multilabel")
    else:
        df, classes = nih.labels(path, task="binary", negative="rest")
    t1 = time.perf_counter()
    if side == "multilabel":
        split = multilabel_grouped_split(df, classes, RATIOS, seed=0)
    else:
        split = patient_grouped_split(df, RATIOS, seed=0)
    assert_no_leakage(df.assign(split=split))
    t2 = time.perf_counter()
    test = (split == "test").to_numpy()
    if side == "multilabel":
        y = finding_matrix(df, classes)
        share = y[test].sum(0) / y.sum(0)
    else:
        y = (df["label"] == classes[1]).to_numpy()
        share = np.array([y[test].sum() / y.sum()])
    return {
        "images": len(df), "patients": int(df["patient_id"].nunique()),
        "labels_s": t1 - t0, "split_s": t2 - t1,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss0,
        "worst_test_share_error": float(np.abs(share - RATIOS["test"]).max()),
    }  # fmt: skip


def main() -> None:
    if sys.argv[1:2] == ["_child"]:
        print(json.dumps(child(sys.argv[2])))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"multilabel": [], "binary": []}
    for i in range(args.repeats):
        for side in runs if i % 2 == 0 else list(runs)[::-1]:
            out = subprocess.run([sys.executable, __file__, "_child", side], check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
            runs[side].append(json.loads(out.strip().splitlines()[-1]))
            print(side, runs[side][-1], flush=True)
    keys = ("labels_s", "split_s", "peak_rss_mb", "worst_test_share_error")
    median = {s: {k: statistics.median(r[k] for r in rs) for k in keys} for s, rs in runs.items()}
    save("nih_selection", {
        "file": "Data_Entry_2017_v2020 (torchxrayvision's wheel)",
        "images": runs["multilabel"][0]["images"], "patients": runs["multilabel"][0]["patients"],
        "ratios": RATIOS, "repeats": args.repeats, "runs": runs, "median": median,
        "ratio_multilabel_over_binary": {k: median["multilabel"][k] / median["binary"][k]
                                         for k in ("labels_s", "split_s", "peak_rss_mb")},
    }, quiet=("runs",))  # fmt: skip


if __name__ == "__main__":
    main()
