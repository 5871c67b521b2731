"""The result tables of docs/benchmarks.md, generated from the benchmarks' JSON results.

    python benchmarks/tables.py           # rewrite every generated table from benchmarks/results/
    python benchmarks/tables.py --check   # exit 1 if a table differs from its JSON (the tests run it)

A generated table sits between two comment lines in the Markdown:

    <!-- generated from benchmarks/results/<name>.json by benchmarks/tables.py -->
    ...
    <!-- end of generated table -->

Everything between them is rewritten from the JSON that ``benchmarks/common.py:save`` wrote when
the benchmark ran (figures, repeats, the machine and the date), so a figure in the docs is always
the one measured. Prose around the tables is written by hand and says what the figures mean.
Reads JSON only: no torch, runs anywhere.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
BLOCK = re.compile(
    r"(<!-- generated from benchmarks/results/(?P<name>[\w-]+)\.json by benchmarks/tables\.py -->\n)"
    r"(?P<body>.*?)"
    r"(<!-- end of generated table -->)",
    re.S,
)


def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def _runs(xs: list[float], digits: int = 0) -> str:
    return ", ".join(_n(x, digits) for x in xs)


def _stamp(r: dict) -> str:
    when = f", {r['date']}" if r.get("date") else ""
    return f"Measured on {r['machine']}{when}."


def _side_by_side(head: str, sides: list[tuple[str, float, list]], ratio: tuple, digits: int):
    """Two pipelines measured side by side: each one's median and runs, then their ratio
    (``ratio``: its label and its value as printed)."""
    rows = [f"| {head} | images/s, median of {len(sides[0][2])} | runs |", "| --- | --- | --- |"]
    rows += [
        f"| {label} | {_n(med, digits)} | {_runs(runs, digits)} |" for label, med, runs in sides
    ]
    return [*rows, f"| **{ratio[0]}** | **{ratio[1]}** | |"]


def data(r: dict) -> list[str]:
    table = _side_by_side(
        f"pipeline ({r['files']:,} files, {r['size']} px, batch {r['batch']})",
        [
            ("(a) the original systems' way: PIL open + resize + per-sample torchvision "
             "transforms, DataLoader with 2 workers", r["original_median"], r["original_img_s"]),
            ("(b) cxrlab: uint8 cache (memory-mapped) + batched augmentation + normalization",
             r["cxrlab_median"], r["cxrlab_img_s"]),
        ],
        ("ratio (b) / (a)", f"{r['ratio']:.1f}x"),
        0,
    )  # fmt: skip
    return [
        *table,
        "",
        f"One-time cache build of the same files: {r['cache_build_s']:.1f} s "
        f"({_n(r['cache_build_img_s'])} images/s). {_stamp(r)}",
    ]


def train(r: dict) -> list[str]:
    table = _side_by_side(
        f"{r['backbone']}, {r['size']} px, batch {r['batch']}, {r['train_images']} training images",
        [
            ("full training epoch through Lightning", r["pipeline_median"], r["pipeline_img_s"]),
            ("ceiling: optimizer steps on tensors in memory", r["ceiling_median"],
             r["ceiling_img_s"]),
        ],
        ("ratio", f"{r['ratio']:.2f}"),
        1,
    )  # fmt: skip
    return [*table, "", _stamp(r)]


def memory(r: dict) -> list[str]:
    rows = [
        f"| cached images ({r['size']} px) | store size | peak RSS, main process "
        "| peak RSS, loader worker |",
        "| --- | --- | --- | --- |",
    ]
    for n, run in sorted(r["runs"].items(), key=lambda kv: int(kv[0])):
        store = int(n) * r["size"] ** 2 / 2**20
        rows.append(
            f"| {int(n):,} | {store:.0f} MB | {_n(run['peak_rss_mb'])} MB "
            f"| {_n(run['peak_worker_rss_mb'])} MB |"
        )
    rows += ["", f"Ratio of the main process's peaks: {r['ratio_main']:.2f}. {_stamp(r)}"]
    return rows


# cache_build's format keys (benchmarks/cache_build.py FORMATS), as the table names them
FORMAT_LABELS = {
    "png8_1024": "PNG 8-bit 1024 px (NIH)",
    "png16_2500x2048": "PNG 16-bit 2048x2500",
    "jpeg_1800x1500": "JPEG 1500x1800 (Kaggle pneumonia)",
    "dicom8_1024": "DICOM 8-bit 1024 px, uncompressed (RSNA)",
    "dicom12_3000x2500": "DICOM 12-bit 2500x3000, uncompressed (SIIM)",
    "dicom12_rle": "DICOM 12-bit 2500x3000, RLE",
    "dicom12_jpegls": "DICOM 12-bit 2500x3000, JPEG-LS",
    "dicom12_jpeg2000": "DICOM 12-bit 2500x3000, JPEG 2000",
}


def cache_build(r: dict) -> list[str]:
    rows = [
        f"| format (like), {r['size']} px out | files | MB on disk | images/s, 1 worker "
        "| images/s, 2 workers | ratio 2/1 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, f in r["formats"].items():
        rows.append(
            f"| {FORMAT_LABELS.get(name, name)} | {f['files']} | {f['mb_on_disk']:.1f} | {f['images_per_s_1_worker']:.1f} "
            f"| {f['images_per_s_2_workers']:.1f} | {f['ratio_2_to_1']:.2f} |"
        )
    rows += ["", _stamp(r)]
    return rows


# peers' pipeline keys (benchmarks/peers.py PIPELINES), as the table names them
PEER_LABELS = {
    "monai_cache": "MONAI CacheDataset + ThreadDataLoader / DataLoader (2 workers)",
    "monai_persistent": "MONAI PersistentDataset + DataLoader (2 workers)",
    "xrv": "torchxrayvision's way, no cache: DataLoader (2 workers)",
    "cxrlab": "**cxrlab**: uint8 cache + batched augmentation",
}


def peers(r: dict) -> list[str]:
    rows = [
        "| files | pipeline | first epoch, images/s | steady epochs, images/s "
        "| cxrlab's steady / this | cxrlab's first / this | peak RSS (largest worker) "
        "| cache on disk |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _key, run in sorted(r["by_files"].items(), key=lambda kv: int(kv[0])):
        for kind, s in run["summary"].items():
            steady = s.get("cxrlab_steady_ratio")
            first = s.get("cxrlab_first_ratio")
            rows.append(
                f"| {run['files']:,} | {PEER_LABELS.get(kind, kind)} "
                f"| {_n(s['first_epoch_img_s'])} | {_n(s['steady_img_s'])} "
                f"| {'' if steady is None else f'{steady:.1f}x'} "
                f"| {'' if first is None else f'{first:.1f}x'} "
                f"| {_n(s['peak_rss_mb'])} MB ({_n(s['peak_child_rss_mb'])} MB) "
                f"| {_n(s['cache_disk_mb'])} MB |"
            )
    counts = ", ".join(
        f"{run['files']:,} files: median of {run['rounds']} round{'s' if run['rounds'] > 1 else ''}"
        + (f", steady epochs over their first {run['steady_batch_limit']} batches"
           if run.get("steady_batch_limit") else "")
        for _, run in sorted(r["by_files"].items(), key=lambda kv: int(kv[0]))
    )  # fmt: skip
    split = [
        f"{run['files']:,} files: {_n(s['peak_anon_mb'])} MB anonymous, "
        f"{_n(s['peak_file_mb'])} MB file-backed"
        for _, run in sorted(r["by_files"].items(), key=lambda kv: int(kv[0]))
        if "peak_anon_mb" in (s := run["summary"]["cxrlab"])
    ]
    return [
        *rows,
        "",
        f"cxrlab's resident memory at its peaks: {'; '.join(split)}." if split else "",
        f"{r['size']} px, batch {r['batch']}; {counts}. {_stamp(r)}",
    ]


def container(r: dict) -> list[str]:
    """The service image against serve.py on the host (benchmarks/container.py)."""
    med, ratio = r["median"], r["ratio_container_over_host"]
    labels = {
        "health_s": "start to first answered /health, s",
        "first_predict_s": "start to first answered /predict, s",
        "warm_predict_p50_ms": "POST /predict once warm, p50 ms",
    }
    n = len(r["rounds"]["host"])
    rows = [
        f"| median of {n} rounds | container | host (`python serve.py`) | container / host |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in labels.items():
        rows.append(
            f"| {label} | {med['container'][key]:.2f} | {med['host'][key]:.2f} | {ratio[key]:.2f} |"
        )
    size = r["image_bytes"] / 1e9
    return [
        *rows,
        "",
        f"Image: {size:.2f} GB (the Python environment's layer: {r['environment_layer']}); "
        f"{r['checkpoint']}; request: {r['request_image']}. {_stamp(r)}",
    ]


def tracking(r: dict) -> list[str]:
    """Tracking on against off (benchmarks/tracking.py)."""
    med, ratio = r["median"], r["ratio_on_over_off"]
    n = len(r["runs"]["on"])
    return [
        f"| median of {n} rounds | tracking on (defaults) | off | on / off |",
        "| --- | --- | --- | --- |",
        f"| train.py, whole command, s | {med['on']['wall_s']:.1f} | {med['off']['wall_s']:.1f} "
        f"| {ratio['wall_s']:.3f} |",
        f"| training and testing (train.log), s | {med['on']['train_test_s']:.1f} | "
        f"{med['off']['train_test_s']:.1f} | {ratio['train_test_s']:.3f} |",
        f"| offline W&B run folder, MB | {med['on']['wandb_run_mb']:.1f} | "
        f"{med['off']['wandb_run_mb']:.1f} | |",
        f"| staged for upload (tables' artifacts), MB | {med['on']['staged_mb']:.1f} | "
        f"{med['off']['staged_mb']:.1f} | |",
        "",
        f"{r['setup']}. {_stamp(r)}",
    ]


def nih_selection(r: dict) -> list[str]:
    """The whole NIH label file through selection (benchmarks/nih_selection.py)."""
    med, ratio = r["median"], r["ratio_multilabel_over_binary"]
    rows = [
        f"| median of {r['repeats']} fresh processes | multi-label (14 findings) | binary "
        "(Pneumonia vs rest) | multi-label / binary |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in (("labels_s", "parse the label file, s"),
                       ("split_s", "patient-grouped split + leakage check, s"),
                       ("peak_rss_mb", "peak RSS of the process, MB")):  # fmt: skip
        rows.append(f"| {label} | {med['multilabel'][key]:.2f} | {med['binary'][key]:.2f} | "
                    f"{ratio[key]:.2f} |")  # fmt: skip
    rows.append(
        "| worst finding's share of the test split, off its 20% by | "
        f"{med['multilabel']['worst_test_share_error']:.4f} | "
        f"{med['binary']['worst_test_share_error']:.4f} | |"
    )
    return [*rows, "", f"{r['file']}: {r['images']:,} images, {r['patients']:,} patients, "
            f"ratios {r['ratios']}. {_stamp(r)}"]  # fmt: skip


RENDER = {
    "data": data,
    "train": train,
    "memory": memory,
    "cache_build": cache_build,
    "peers": peers,
    "container": container,
    "tracking": tracking,
    "nih_selection": nih_selection,
}


def render(text: str) -> str:
    """``text`` with every generated block rewritten from its JSON."""

    def one(m: re.Match) -> str:
        name = m["name"]
        if name not in RENDER:
            raise SystemExit(f"{DOC.name}: no table renderer for {name!r} (benchmarks/tables.py)")
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            raise SystemExit(f"{path}: missing; run `python benchmarks/run.py {name}` first")
        body = "\n".join(RENDER[name](json.loads(path.read_text())))
        return f"{m.group(1)}{body}\n{m.group(4)}"

    return BLOCK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 where the doc differs")
    args = ap.parse_args(argv)
    text = DOC.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{DOC}: generated tables differ from benchmarks/results/; run "
                  "`python benchmarks/tables.py`", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    DOC.write_text(new)
    print(f"{DOC}: {len(BLOCK.findall(new))} tables from {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
