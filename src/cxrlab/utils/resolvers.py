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


def _mode(metric):
    """``${cxrlab.mode:${optimized_metric}}``: min for losses and errors, else max."""
    return "min" if lower_is_better(metric) else "max"


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


def register() -> None:
    if not OmegaConf.has_resolver("cxrlab.resume_dir"):
        OmegaConf.register_new_resolver("cxrlab.resume_dir", resume_dir)
    if not OmegaConf.has_resolver("cxrlab.default"):
        OmegaConf.register_new_resolver("cxrlab.default", _default)
    if not OmegaConf.has_resolver("cxrlab.mode"):
        OmegaConf.register_new_resolver("cxrlab.mode", _mode)
