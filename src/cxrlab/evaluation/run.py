"""What ``eval.py`` does: evaluate any checkpoint on a split and write the same report.

The checkpoint alone restores the model, its input contract, its threshold and (unless
``data=...`` is given) the data selection of its training run, so ``eval.py ckpt_path=best.ckpt``
reproduces the test report of ``train.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from cxrlab.data.datamodule import CXRDataModule
from cxrlab.errors import UserError
from cxrlab.models.module import CXRClassifier
from cxrlab.training import instantiate_group, write_split_report

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    pass


def read_checkpoint(path: str | Path, name: str = "ckpt_path") -> dict:
    """Load a cxrlab checkpoint's dictionary (tensors and plain types only) or say why not.

    ``name``: how the user gave the path (``ckpt_path`` for eval.py, ``--ckpt`` for predict.py
    and serve.py), so the message names what they typed.
    """
    p = Path(path)
    sep = " " if name.startswith("-") else "="
    where = f"{name}{sep}{path}"
    if not p.is_file():
        raise CheckpointError(f"{where}: no such file (a checkpoint written by train.py, e.g. "
                              "logs/train/runs/<run>/checkpoints/best.ckpt)")  # fmt: skip
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{where}: not a readable PyTorch checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "cxrlab" not in ckpt:
        raise CheckpointError(
            f"{where}: not a cxrlab checkpoint (no hyper-parameters "
            "or cxrlab section); train one with train.py"
        )
    hp = ckpt["hyper_parameters"]
    if "class_names" not in hp or "backbone" not in hp:
        raise CheckpointError(f"{where}: a checkpoint of another task (no class names)")
    return ckpt


def load_model(path: str | Path, name: str = "ckpt_path") -> CXRClassifier:
    read_checkpoint(path, name)
    # pretrained=false, no init_from: the checkpoint holds every weight; look for no other file
    return CXRClassifier.load_from_checkpoint(
        str(path), map_location="cpu", pretrained="false", init_from=None, weights_only=True
    )


def evaluate(cfg: DictConfig) -> dict:
    ckpt_path = cfg.get("ckpt_path")
    if not ckpt_path:
        raise CheckpointError("ckpt_path is required: python eval.py ckpt_path=.../best.ckpt")
    ckpt = read_checkpoint(ckpt_path)
    model = load_model(ckpt_path)
    if cfg.get("data") is not None:
        dm: CXRDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    else:
        dm = CXRDataModule(**ckpt["datamodule_hyper_parameters"])
    dm.select()
    if list(dm.classes) != list(model.class_names):
        raise CheckpointError(
            f"the dataset's classes {list(dm.classes)} differ from the checkpoint's "
            f"{list(model.class_names)}; choose a matching data.task or dataset"
        )
    if dm.preprocess.to_dict() != dict(model.hparams["preprocess"]):
        log.info("Using the checkpoint's preprocessing %s", model.hparams["preprocess"])
        from cxrlab.data.preprocess import PreprocessSpec

        dm.preprocess = PreprocessSpec(**model.hparams["preprocess"])
    loggers = instantiate_group(cfg.get("logger"))
    trainer = pl.Trainer(
        logger=loggers or False,
        accelerator=cfg.get("accelerator", "auto"),
        devices=1,
        enable_checkpointing=False,
    )
    split = cfg.get("split", "test")
    if split not in ("train", "val", "test"):
        raise CheckpointError(f"split={split!r}: use train, val or test")
    dm.setup()
    model.test_split = split  # metrics logged as <split>/..., e.g. val/auroc for split=val
    trainer.test(model, dataloaders=dm.loader(split))
    out = Path(cfg.paths.output_dir)
    # bootstrap settings: the command line's, else those of the training run's report
    ev = {
        **model.evaluation_settings,
        **{k: v for k, v in dict(cfg.get("evaluation") or {}).items() if v is not None},
    }
    report = write_split_report(
        out / "report", dm, model, split, ev, str(ckpt_path), loggers=loggers
    )
    for lg in loggers:
        lg.finalize("success")
    log.info(
        "Report of the %s split (%d images, %d patients): %s (metrics.json, predictions.csv, "
        "pictures, model_card.md)",
        split,
        report["images"],
        report["patients"],
        out / "report",
    )
    return report
