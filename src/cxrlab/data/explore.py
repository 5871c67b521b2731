"""Know the data before training on it: ``python explore.py data=<name>``.

Writes ``summary.json``, ``summary.md`` and pictures. Every figure comes from the same source
index and the same selection (balanced subset, patient-grouped split) that a training run with
the same ``data.*`` settings makes, so the report describes exactly what training would see.
Every selected image is decoded as training decodes it (the image cache, which training then
reuses), so unreadable files and split counts are training's; size and format statistics come
from the files' headers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data.datamodule import CXRDataModule
from cxrlab.data.imageio import UnreadableImageError, read_header
from cxrlab.data.preprocess import PreprocessSpec, load_preprocessed
from cxrlab.utils.progress import track

log = logging.getLogger(__name__)


def headers(paths: list[str], progress: bool = True) -> tuple[pd.DataFrame, dict[str, str]]:
    rows, bad = [], {}
    for p in track(paths, len(paths), "Reading image headers", enabled=progress):
        try:
            rows.append({"path": p, **read_header(p)})
        except UnreadableImageError as e:
            bad[p] = e.reason
    return pd.DataFrame(rows), bad


def duplicate_files(paths: list[str]) -> list[list[str]]:
    """Groups of byte-identical files (sizes first; only same-size files are hashed)."""
    by_size = defaultdict(list)
    for p in paths:
        try:
            by_size[Path(p).stat().st_size].append(p)
        except OSError:
            continue
    groups = defaultdict(list)
    for same in by_size.values():
        if len(same) < 2:
            continue
        for p in same:
            groups[hashlib.sha1(Path(p).read_bytes()).hexdigest()].append(p)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _class_counts(df: pd.DataFrame, classes: list[str]) -> dict[str, int]:
    """Images per class; multi-label: images showing each finding."""
    if f"y_{classes[0]}" in df:
        return {c: int((df[f"y_{c}"] == 1).sum()) for c in classes}
    return {c: int((df["label"] == c).sum()) for c in classes}


def co_occurrence(df: pd.DataFrame, classes: list[str]) -> dict[str, dict[str, int]]:
    """Multi-label: images showing both findings (the diagonal: each finding's images)."""
    y = (df[[f"y_{c}" for c in classes]].to_numpy(dtype=float) == 1).astype(np.int64)
    both = y.T @ y
    return {a: {b: int(both[i, j]) for j, b in enumerate(classes)} for i, a in enumerate(classes)}


def _counts(df: pd.DataFrame, classes: list[str], column: str) -> dict:
    out = {}
    for split, part in df.groupby(column, sort=False):
        out[str(split)] = {
            "images": int(len(part)),
            "patients": int(part["patient_id"].nunique()),
            "classes": _class_counts(part, classes),
        }
    return out


def summarize(dm: CXRDataModule, header_sample: int | None, progress: bool, seed: int = 0):
    """(summary dict, full index, selected manifest, header table)."""
    selected = dm.select()  # the run's selection: subset + split, exactly as training
    full, classes = dm.index()  # every image of the source, before the selection
    # every selected image decoded and preprocessed as training does (the uint8 cache, which
    # a training run with the same settings then reuses): a truncated file whose header reads
    # fine is unreadable here as it is in training, so the counts are training's, file by file
    splits = dm.splits_frame()

    paths = full["path"].tolist()
    sampled = paths
    if header_sample and len(paths) > header_sample:
        rng = np.random.default_rng(seed)
        sampled = sorted(rng.choice(paths, header_sample, replace=False).tolist())
    head, _ = headers(sampled, progress)

    per_patient = full.groupby("patient_id").size()
    summary: dict = {
        "dataset": dm.source_name,
        "task": dm.task,
        "classes": list(classes),
        "index": {
            "images": int(len(full)),
            "patients": int(full["patient_id"].nunique()),
            "studies": int(full["study_id"].nunique()) if "study_id" in full else None,
            "classes": _class_counts(full, classes),
            "images_per_patient": {
                "mean": round(float(per_patient.mean()), 2),
                "median": float(per_patient.median()),
                "max": int(per_patient.max()),
                "histogram": {
                    int(k): int(v) for k, v in per_patient.value_counts().sort_index().items()
                },
            },
        },
    }
    if dm.task == "multilabel":
        y = full[[f"y_{c}" for c in classes]].to_numpy(dtype=float)
        summary["index"]["images_without_findings"] = int((np.nan_to_num(y) == 0).all(1).sum())
        summary["index"]["unknown_labels"] = {c: int(np.isnan(y[:, k]).sum())
                                              for k, c in enumerate(classes)}  # fmt: skip
        summary["index"]["co_occurrence"] = co_occurrence(full, classes)
    if "subtype" in full and dm.task == "binary":
        summary["index"]["subtypes"] = {
            k: int(v) for k, v in full["subtype"].value_counts().items()
        }
    if "view" in full:
        summary["index"]["views"] = {str(k): int(v) for k, v in full["view"].value_counts().items()}
    summary["index"]["left_out_by_source"] = dict(dm.dropped)
    if "official_split" in full:
        summary["official_splits"] = _counts(full, classes, "official_split")
        leak = full.groupby("patient_id")["official_split"].nunique()
        summary["official_split_leakage"] = {
            "patients_in_several_official_splits": int((leak > 1).sum()),
            "examples": sorted(leak[leak > 1].index.astype(str).tolist())[:10],
        }
    summary["run_selection"] = {
        "dataset_size": dm.dataset_size,
        "split_policy": dm.split_policy,
        "ratios": dm.ratios,
        "splits": {s: v for s, v in dm.describe().items() if s in set(selected["split"])},
        "how": (
            "the training code's own selection (source index, balanced subset, patient-grouped "
            "split) and every selected image decoded with the training preprocessing (the "
            "image cache); unreadable images are left out of the split counts, as training "
            "skips them (data.on_bad_file=skip)"
        ),
    }
    bad = splits[splits["unreadable"] != ""]
    summary["unreadable"] = {
        "images": int(len(bad)),
        "of": int(len(splits)),
        "by_reason": {str(k): int(v) for k, v in bad["unreadable"].value_counts().items()},
        "files": [{"path": p, "reason": r} for p, r in zip(bad["path"], bad["unreadable"])][:50],
    }
    dups = duplicate_files(paths)
    summary["duplicates"] = {
        "groups": len(dups),
        "files": int(sum(len(g) for g in dups)),
        "examples": dups[:5],
    }
    # sizes and formats only: which files are unreadable is the decode's to say (above)
    summary["headers"] = {"read": int(len(head)), "of": int(len(paths))}
    if not head.empty:
        summary["headers"].update(
            {
                "width": _stats(head["width"]),
                "height": _stats(head["height"]),
                "aspect_h_over_w": _stats(head["height"] / head["width"]),
                "formats": {str(k): int(v) for k, v in head["format"].value_counts().items()},
                "bit_depths": {int(k): int(v) for k, v in head["bit_depth"].value_counts().items()},
                "color": {str(k): int(v) for k, v in head["color"].value_counts().items()},
            }
        )
        if "photometric" in head:
            summary["headers"]["photometric"] = {
                str(k): int(v) for k, v in head["photometric"].dropna().value_counts().items()
            }
    return summary, full, selected, head, splits


def _stats(s: pd.Series) -> dict:
    def num(x):
        x = float(x)
        return int(x) if x.is_integer() else round(x, 3)

    return {"min": num(s.min()), "median": num(s.median()), "max": num(s.max())}


def samples(
    df: pd.DataFrame, classes: list[str], per_class: int, seed: int
) -> dict[str, list[str]]:
    out = {}
    for c in classes:
        part = df[df[f"y_{c}"] == 1] if f"y_{c}" in df else df[df["label"] == c]
        n = min(per_class, len(part))
        out[c] = part.sample(n, random_state=seed)["path"].tolist() if n else []
    return out


def plot_all(
    summary, full, selected, head, out: Path, spec: PreprocessSpec, per_class: int, seed: int
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    classes = summary["classes"]
    written = []

    # class balance per split: official splits of the index, and the run's splits
    panels = [("run selection", summary["run_selection"]["splits"])]
    if "official_splits" in summary:
        panels.insert(0, ("official splits (whole index)", summary["official_splits"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, splits) in zip(axes[0], panels):
        names = list(splits)
        bottom = np.zeros(len(names))
        for c in classes:
            vals = np.array([splits[s]["classes"].get(c, 0) for s in names])
            ax.bar(names, vals, bottom=bottom, label=c)
            bottom += vals
        for i, s in enumerate(names):
            ax.text(
                i,
                bottom[i],
                f"{splits[s]['images']} img\n{splits[s]['patients']} pat",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(title)
        ax.set_ylabel("images")
        ax.set_ylim(0, bottom.max() * 1.25 if len(bottom) else 1)
    axes[0][0].legend()
    fig.tight_layout()
    written.append(_save(fig, out / "class_balance.png"))

    if not head.empty:
        fig, ax = plt.subplots(figsize=(6, 5))
        h = ax.hist2d(head["width"], head["height"], bins=30, cmap="viridis", cmin=1)
        fig.colorbar(h[3], ax=ax, label="images")
        ax.set_xlabel("width (px)")
        ax.set_ylabel("height (px)")
        ax.set_title(f"image sizes ({len(head)} headers)")
        fig.tight_layout()
        written.append(_save(fig, out / "image_sizes.png"))

    picks = samples(selected, classes, per_class, seed)
    small = PreprocessSpec(**{**spec.to_dict(), "size": min(spec.size, 128)})
    images = {c: [] for c in classes}
    for c, paths in picks.items():
        for p in paths:
            try:
                images[c].append(load_preprocessed(p, small))
            except UnreadableImageError:
                continue
    fig, ax = plt.subplots(figsize=(7, 4))
    for c in classes:
        if images[c]:
            vals = np.concatenate([im.ravel() for im in images[c]])
            ax.hist(vals, bins=64, range=(0, 255), histtype="step", density=True, label=c, lw=1.5)
    ax.set_xlabel("pixel value after preprocessing (0-255)")
    ax.set_ylabel("density")
    ax.set_title(f"intensity per class ({per_class} images each, as the model sees them)")
    ax.legend()
    fig.tight_layout()
    written.append(_save(fig, out / "intensity_per_class.png"))

    cols = min(6, max((len(v) for v in images.values()), default=1))
    fig, axes = plt.subplots(
        len(classes), cols, figsize=(1.8 * cols, 1.9 * len(classes)), squeeze=False
    )
    for r, c in enumerate(classes):
        for k in range(cols):
            ax = axes[r][k]
            ax.axis("off")
            if k < len(images[c]):
                ax.imshow(images[c][k], cmap="gray", vmin=0, vmax=255)
        axes[r][0].set_title(c, loc="left", fontsize=10)
    fig.suptitle("samples per class (preprocessed as for training)")
    fig.tight_layout()
    written.append(_save(fig, out / "samples.png"))

    hist = summary["index"]["images_per_patient"]["histogram"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([str(k) for k in hist], list(hist.values()))
    ax.set_xlabel("images per patient")
    ax.set_ylabel("patients")
    ax.set_title("images per patient (whole index)")
    fig.tight_layout()
    written.append(_save(fig, out / "images_per_patient.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def markdown(summary: dict, pictures: list[Path]) -> str:
    idx = summary["index"]
    lines = [
        f"# Dataset report: {summary['dataset']} ({summary['task']})",
        "",
        f"- images: {idx['images']}, patients: {idx['patients']}"
        + (f", studies: {idx['studies']}" if idx.get("studies") else ""),
        "- classes: "
        + ", ".join(
            f"{c} {n} ({n / max(1, idx['images']):.0%})" for c, n in idx["classes"].items()
        ),
        f"- images per patient: mean {idx['images_per_patient']['mean']}, "
        f"max {idx['images_per_patient']['max']}",
    ]
    if "subtypes" in idx:
        lines.append("- subtypes: " + ", ".join(f"{k} {v}" for k, v in idx["subtypes"].items()))
    if "views" in idx:
        lines.append("- views: " + ", ".join(f"{k} {v}" for k, v in idx["views"].items()))
    if idx.get("left_out_by_source"):
        lines.append(
            "- left out by the source: "
            + "; ".join(f"{k}: {v}" for k, v in idx["left_out_by_source"].items())
        )
    d = summary["duplicates"]
    lines.append(f"- byte-identical files: {d['files']} in {d['groups']} groups")
    u = summary["unreadable"]
    lines.append(
        f"- unreadable (every selected image decoded as training decodes it): {u['images']} of "
        f"{u['of']}" + "".join(f"; {r}: {n}" for r, n in u["by_reason"].items())
    )
    h = summary["headers"]
    lines.append(f"- headers read for sizes and formats: {h['read']} of {h['of']}")
    if "width" in h:
        lines.append(
            f"- width {h['width']['min']}-{h['width']['max']} px (median {h['width']['median']}), "
            f"height {h['height']['min']}-{h['height']['max']} px (median {h['height']['median']}); "
            "formats "
            + ", ".join(f"{k} {v}" for k, v in h["formats"].items())
            + "; bit depths "
            + ", ".join(f"{k} {v}" for k, v in h["bit_depths"].items())
        )
    if "official_splits" in summary:
        leak = summary["official_split_leakage"]["patients_in_several_official_splits"]
        lines += [
            "",
            "## Official splits (as shipped)",
            "",
            _table(summary["official_splits"], summary["classes"]),
        ]
        lines.append(f"\nPatients in more than one official split: {leak}")
    rs = summary["run_selection"]
    lines += [
        "",
        "## What a training run with these settings uses",
        "",
        f"Balanced subset: {rs['dataset_size'] or 'no (all images)'}; split: {rs['split_policy']}"
        + (f", ratios {rs['ratios']}" if rs["split_policy"] == "resplit" else "")
        + "; patient-grouped (no patient in two splits).",
        "",
        _table(rs["splits"], summary["classes"]),
        "",
        f"How: {rs['how']}. Which image went where: splits.csv (the same file a training run "
        "writes).",
        "",
    ]
    if "co_occurrence" in idx:
        cls = summary["classes"]
        lines += [
            "## Findings together (images showing both; the diagonal: each finding)",
            "",
            "| | " + " | ".join(cls) + " |",
            "| --- " * (len(cls) + 1) + "|",
        ]
        lines += [f"| {a} | " + " | ".join(str(idx["co_occurrence"][a][b]) for b in cls) + " |"
                  for a in cls]  # fmt: skip
        lines += ["", f"Images without any finding: {idx['images_without_findings']}; "
                  f"labels unknown per finding: {idx['unknown_labels']}.", ""]  # fmt: skip
    for p in pictures:
        lines.append(f"![{p.stem}]({p.name})")
    if u["files"]:
        lines += ["", "## Unreadable files", ""]
        lines += [f"- `{f['path']}`: {f['reason']}" for f in u["files"]]
    return "\n".join(lines) + "\n"


def _table(splits: dict, classes: list[str]) -> str:
    head = "| split | images | patients | " + " | ".join(classes) + " |"
    sep = "| --- " * (3 + len(classes)) + "|"
    rows = [
        f"| {s} | {v['images']} | {v['patients']} | "
        + " | ".join(str(v["classes"].get(c, 0)) for c in classes)
        + " |"
        for s, v in splits.items()
    ]
    return "\n".join([head, sep, *rows])


def explore(cfg) -> dict:
    import hydra
    from omegaconf import OmegaConf

    from cxrlab.config import check_data_root

    check_data_root(cfg.data.source)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dm: CXRDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    ex = cfg.explore
    summary, full, selected, head, splits = summarize(
        dm, ex.header_sample, ex.progress, int(cfg.seed)
    )
    splits.to_csv(out / "splits.csv", index=False)
    pictures = plot_all(
        summary, full, selected, head, out, dm.preprocess, int(ex.samples_per_class), int(cfg.seed)
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(markdown(summary, pictures))
    log.info("Dataset report: %s (summary.md, summary.json, %d pictures)", out, len(pictures))
    if cfg.get("logger") and "wandb" in cfg.logger:
        from cxrlab.utils.loggers import log_dataset_report

        settings = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
        log_dataset_report(summary, out, pictures, settings)
    return summary
