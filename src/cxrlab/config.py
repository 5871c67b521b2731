"""Checks of a composed config that must fail before any work, naming the key and the choices."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from cxrlab.data.augment import AugmentConfig
from cxrlab.data.datamodule import BAD_FILE_POLICIES, SAMPLERS, SOURCES, SPLIT_POLICIES
from cxrlab.data.preprocess import PreprocessSpec
from cxrlab.data.selection import check_ratios
from cxrlab.errors import UserError, check_choice
from cxrlab.evaluation.thresholds import parse_policy
from cxrlab.models.backbones import check_backbone
from cxrlab.models.finetune import FinetuneConfig
from cxrlab.models.losses import LOSSES
from cxrlab.models.module import OPTIMIZERS, SCHEDULERS
from cxrlab.models.weights import PRETRAINED_MODES


class ConfigError(UserError):
    pass


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


def _choice(value, allowed, key: str) -> None:
    try:
        check_choice(value, allowed, key)
    except UserError as e:
        raise ConfigError(str(e)) from None


def _integer(value, key: str, minimum: int, hint: str) -> int:
    """``value`` as an int >= ``minimum``, or a ConfigError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        ok = False
    else:
        try:
            value, ok = int(value), True
        except ValueError:
            ok = False
    if not ok or value < minimum:
        raise ConfigError(f"{key}={value!r}: {hint}")
    return value


def check_trainer(trainer) -> None:
    """The Trainer settings a user types most, before data and model are built (Lightning
    itself only checks them when the Trainer starts, after the data work)."""
    if trainer is None:
        return
    if trainer.get("max_epochs") is not None:
        _integer(trainer.max_epochs, "trainer.max_epochs", -1,
                 "use a positive number of epochs (-1: no limit)")  # fmt: skip
    if trainer.get("min_epochs") is not None:
        _integer(trainer.min_epochs, "trainer.min_epochs", 0, "use 0 or more epochs")
    for key in ("check_val_every_n_epoch", "accumulate_grad_batches", "log_every_n_steps"):
        if trainer.get(key) is not None:
            _integer(trainer[key], f"trainer.{key}", 1, "use a whole number >= 1")


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
        data, model = cfg.data, cfg.model
        _integer(data.batch_size, "data.batch_size", 1, "use a whole number of images >= 1")
        if data.get("eval_batch_size") is not None:
            _integer(data.eval_batch_size, "data.eval_batch_size", 1,
                     "use a whole number of images >= 1 (or null: data.batch_size)")  # fmt: skip
        _integer(data.num_workers, "data.num_workers", 0, "use 0 (no loader processes) or more")
        check_trainer(cfg.get("trainer"))
        _choice(data.source.name, SOURCES, "data.source.name")
        _choice(data.split.policy, SPLIT_POLICIES, "data.split.policy")
        _choice(data.on_bad_file, BAD_FILE_POLICIES, "data.on_bad_file")
        _choice(data.get("sampler", "shuffle"), SAMPLERS, "data.sampler")
        _choice(data.task, ("binary", "multiclass"), "data.task")
        check_ratios(OmegaConf.to_container(data.split.ratios, resolve=True))
        preprocess = PreprocessSpec(**_plain(data.preprocess))
        if data.dataset_size is not None and int(data.dataset_size) <= 0:
            raise ConfigError(
                f"data.dataset_size={data.dataset_size}: use a positive number or null"
            )
        check_backbone(model.backbone)
        _choice(model.loss.name, LOSSES, "model.loss.name")
        _choice(model.optimizer.name, OPTIMIZERS, "model.optimizer.name")
        _choice(model.scheduler.name, SCHEDULERS, "model.scheduler.name")
        _choice(str(model.pretrained).lower(), PRETRAINED_MODES, "model.pretrained")
        finetune = FinetuneConfig(**_plain(model.get("finetune")))
        if not 0 <= float(model.dropout) < 1:
            raise ConfigError(f"model.dropout={model.dropout}: use a value in [0, 1)")
        if float(model.optimizer.lr) <= 0:
            raise ConfigError(f"model.optimizer.lr={model.optimizer.lr}: must be > 0")
        augment = AugmentConfig(**_plain(cfg.augment))
        if cfg.get("evaluation") is not None:
            parse_policy(cfg.evaluation.threshold)
            if int(cfg.evaluation.bootstrap) < 0:
                raise ConfigError(f"evaluation.bootstrap={cfg.evaluation.bootstrap}: use >= 0")
        if cfg.get("optimized_metric") and not str(cfg.optimized_metric).startswith("val/"):
            raise ConfigError(
                f"optimized_metric={cfg.optimized_metric!r}: choose a validation "
                "metric (val/...); test metrics must not steer training"
            )
        return RunSettings(preprocess=preprocess, augment=augment, finetune=finetune)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e
