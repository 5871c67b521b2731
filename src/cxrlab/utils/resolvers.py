"""OmegaConf resolvers that cxrlab's configs use (registered when cxrlab is imported)."""

from __future__ import annotations

from omegaconf import OmegaConf


def _default(value, fallback):
    """``${cxrlab.default:VALUE,FALLBACK}``: VALUE, or FALLBACK when VALUE is null or empty."""
    return fallback if value is None or value == "" else value


# metric names containing one of these are better when lower (the sweep's direction: auto,
# the checkpoint and early-stopping mode)
LOWER_IS_BETTER = ("loss", "error", "ece", "brier")


def lower_is_better(metric: str | None) -> bool:
    name = (metric or "").lower()
    return any(w in name for w in LOWER_IS_BETTER)


def metric_names(metric) -> list[str]:
    """``optimized_metric`` as a list: one name, or several (a multi-objective sweep)."""
    if metric is None:
        return []
    if isinstance(metric, str):
        return [metric]
    return [str(m) for m in metric]


def first_metric(metric) -> str | None:
    """``${cxrlab.first:${optimized_metric}}``: what checkpoints and early stopping monitor,
    the first of several optimized metrics (a multi-objective sweep), or the one."""
    names = metric_names(metric)
    return names[0] if names else None


def _mode(metric):
    """``${cxrlab.mode:${optimized_metric}}``: min for losses and errors, else max (of the
    first metric, when there are several)."""
    return "min" if lower_is_better(first_metric(metric)) else "max"


def resume_dir(ckpt_path, fallback: str) -> str:
    """``${cxrlab.resume_dir:${ckpt_path},FALLBACK}``: the run folder of the checkpoint a run
    resumes from (``<run>/checkpoints/last.ckpt`` -> ``<run>``), so a resumed run continues in
    its own folder (one train.log, one metrics.csv, its best checkpoint kept); FALLBACK (a new
    folder) for a fresh run or a checkpoint that is not inside a run folder."""
    if not ckpt_path:
        return fallback
    from pathlib import Path

    ckpt = Path(str(ckpt_path)).expanduser().resolve()
    run = ckpt.parent.parent
    if ckpt.parent.name == "checkpoints" and (run / ".hydra").is_dir():
        return str(run)
    return fallback


def precision(accelerator="auto") -> str:
    """``${cxrlab.precision:${trainer.accelerator}}``: the fastest safe precision where the run
    trains: bf16-mixed on GPUs that support bfloat16 (Ampere and later), 16-mixed on older
    GPUs (Lightning scales the loss), 32-true on CPUs (bfloat16 autocast is slow on most)."""
    acc = str(accelerator or "auto").lower()
    if acc == "cpu":
        return "32-true"
    import torch

    if acc in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def workers(most=8) -> int:
    """``${cxrlab.workers:8}``: DataLoader workers, at most ``most`` and one fewer than the
    CPUs this process may use (the main process feeds the GPU), at least 0."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(int(most), cpus - 1))


def register() -> None:
    if not OmegaConf.has_resolver("cxrlab.precision"):
        OmegaConf.register_new_resolver("cxrlab.precision", precision)
    if not OmegaConf.has_resolver("cxrlab.workers"):
        OmegaConf.register_new_resolver("cxrlab.workers", workers)
    if not OmegaConf.has_resolver("cxrlab.resume_dir"):
        OmegaConf.register_new_resolver("cxrlab.resume_dir", resume_dir)
    if not OmegaConf.has_resolver("cxrlab.default"):
        OmegaConf.register_new_resolver("cxrlab.default", _default)
    if not OmegaConf.has_resolver("cxrlab.first"):
        OmegaConf.register_new_resolver("cxrlab.first", first_metric)
    if not OmegaConf.has_resolver("cxrlab.mode"):
        OmegaConf.register_new_resolver("cxrlab.mode", _mode)
