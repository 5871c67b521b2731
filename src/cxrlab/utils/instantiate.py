"""Building objects from config groups (Hydra's ``instantiate``), shared by every entry point."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


def instantiate_group(cfg: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group that has a ``_target_``."""
    out = []
    for _, conf in (cfg or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            out.append(hydra.utils.instantiate(conf))
    return out


def instantiate_data(cfg: DictConfig):
    """(the run's CXRDataModule, its augmentation settings as a dict) from a composed config."""
    from omegaconf import OmegaConf

    augment = OmegaConf.to_container(cfg.augment, resolve=True)
    return hydra.utils.instantiate(cfg.data, augment=augment, _convert_="all"), augment


def instantiate_model(model_cfg: DictConfig, dm, augment: dict):
    """The run's CXRClassifier for a selected data module: its classes, the training split's
    class counts (weighted losses), the data's preprocessing (into the checkpoint)."""
    return hydra.utils.instantiate(
        model_cfg,
        class_names=dm.classes,
        class_counts=dm.class_counts("train"),
        preprocess=dm.preprocess.to_dict(),
        augment=augment,
        _convert_="all",
    )
