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


def _partial(node: DictConfig):
    """The node's ``_target_`` with its settings bound, waiting for the settings objects (Hydra
    merges keyword arguments into the config, which would turn them back into dictionaries)."""
    return hydra.utils.instantiate(node, _partial_=True, _convert_="all")


def instantiate_data(cfg: DictConfig, settings):
    """The run's CXRDataModule from a composed config and its ``RunSettings``
    (``cxrlab.config.validate``): preprocessing and augmentation as built there."""
    return _partial(cfg.data)(preprocess=settings.preprocess, augment=settings.augment)


def instantiate_model(model_cfg: DictConfig, dm, settings):
    """The run's CXRClassifier for a selected data module: its classes, the training split's
    class counts (weighted losses), the data's preprocessing (into the checkpoint), the run's
    augmentation and fine-tuning settings."""
    extra = {}
    if getattr(dm, "multilabel", False):  # per-finding positives and negatives of training
        positives, negatives = dm.finding_counts("train")
        extra = {"multilabel": True, "negative_counts": negatives}
    return _partial(model_cfg)(
        **extra,
        class_names=dm.classes,
        class_counts=dm.class_counts("train"),
        preprocess=dm.preprocess,
        augment=settings.augment,
        finetune=settings.finetune,
    )
