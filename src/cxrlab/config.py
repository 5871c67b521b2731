"""A composed config checked before any work: each part by the rules of its owner, and the
rules that span several keys or parts, here.

Every setting has one owner, which holds its rules in one place and runs them when it is built:
``data.*`` the data module (``cxrlab.data.datamodule.check_settings``), ``model.*`` the
classifier (``cxrlab.models.module.check_settings``), ``data.preprocess`` PreprocessSpec,
``augment`` AugmentConfig, ``model.finetune`` FinetuneConfig, ``evaluation`` the threshold
policies (``cxrlab.evaluation.thresholds.check_settings``). ``validate`` runs them all up front,
so a wrong value is named before minutes of data work, and builds the settings objects once.
What is left here: the Trainer keys users type most (Lightning checks them only when the
Trainer starts, after the data work) and the run-level rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from cxrlab.data import datamodule
from cxrlab.data.augment import AugmentConfig
from cxrlab.data.preprocess import PreprocessSpec
from cxrlab.errors import ConfigError, check_integer
from cxrlab.evaluation import thresholds
from cxrlab.models import module
from cxrlab.models.finetune import FinetuneConfig

__all__ = ["ConfigError", "RunSettings", "check_data_root", "check_trainer", "validate"]


@dataclass(frozen=True)
class RunSettings:
    """The settings objects that more than one part of a run reads, built (and so checked)
    once here from the composed config and handed to the data module and the model, which
    keep them as they are: the preprocessing (data module, model, checkpoint, predictors), the
    augmentation (data module for augment.device=cpu, model for batch) and the fine-tuning
    policy (model, its callbacks and optimizer)."""

    preprocess: PreprocessSpec
    augment: AugmentConfig
    finetune: FinetuneConfig


def check_trainer(trainer) -> None:
    """The Trainer settings a user types most, before data and model are built (Lightning
    itself only checks them when the Trainer starts, after the data work)."""
    if trainer is None:
        return
    if trainer.get("max_epochs") is not None:
        check_integer(trainer.max_epochs, "trainer.max_epochs", -1,
                      "use a positive number of epochs (-1: no limit)")  # fmt: skip
    if trainer.get("min_epochs") is not None:
        check_integer(trainer.min_epochs, "trainer.min_epochs", 0, "use 0 or more epochs")
    for key in ("check_val_every_n_epoch", "accumulate_grad_batches", "log_every_n_steps"):
        if trainer.get(key) is not None:
            check_integer(trainer[key], f"trainer.{key}", 1, "use a whole number >= 1")


def check_data_root(source) -> None:
    """A dataset that is not where ``data.source.root``/``file`` says, named before any work
    (apart from ``validate``: that one checks a config, this one the machine it runs on)."""
    from pathlib import Path

    if source.get("name") == "synthetic":  # generated on first use
        return
    for key in ("file", "root"):
        value = source.get(key)
        if value is not None and not Path(str(value)).exists():
            raise ConfigError(
                f"data.source.{key}={value}: no such {'file' if key == 'file' else 'folder'}. "
                f"Point it at the dataset (data.source.{key}=/path/to/it) or get the dataset "
                "with `python download_data.py --list`"
            )


def _plain(node) -> dict:
    return {} if node is None else OmegaConf.to_container(node, resolve=True)


def validate(cfg: DictConfig) -> RunSettings:
    """Check the composed train config before any work; the run's settings objects."""
    try:
        datamodule.check_settings(_plain(cfg.data))
        module.check_settings(_plain(cfg.model))
        check_trainer(cfg.get("trainer"))
        if cfg.get("evaluation") is not None:
            thresholds.check_settings(cfg.evaluation)
        from cxrlab.utils.tracking import TrackingSettings

        TrackingSettings(**_plain(cfg.get("tracking")))  # tracking.*: named before any work
        settings = RunSettings(
            preprocess=PreprocessSpec(**_plain(cfg.data.get("preprocess"))),
            augment=AugmentConfig(**_plain(cfg.get("augment"))),
            finetune=FinetuneConfig(**_plain(cfg.model.get("finetune"))),
        )
        # run-level: what steers checkpoints, early stopping and sweeps is never a test figure
        from cxrlab.utils.resolvers import metric_names

        for name in metric_names(cfg.get("optimized_metric")):
            if not name.startswith("val/"):
                raise ConfigError(
                    f"optimized_metric={name!r}: choose a validation "
                    "metric (val/...); test metrics must not steer training"
                )
        return settings
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # the settings objects' own checks; UserErrors too
        raise ConfigError(str(e)) from e
