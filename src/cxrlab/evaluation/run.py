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
from omegaconf import DictConfig

from cxrlab.checkpoints import CheckpointError, load_model, read_checkpoint
from cxrlab.data.datamodule import CXRDataModule
from cxrlab.evaluation.report import write_split_report
from cxrlab.utils.instantiate import instantiate_group
from cxrlab.utils.loggers import log_split, tracked

log = logging.getLogger(__name__)


def zero_shot_model(cfg: DictConfig, dm: CXRDataModule):
    """torchxrayvision's pretrained DenseNet as it comes, its classifier rows for the
    dataset's findings (``model.head=pretrained_findings``): no training at all. Every finding
    must be one torchxrayvision knows. Thresholds per finding are chosen on the validation
    split by ``evaluation.threshold``, as a trained model's are."""
    from cxrlab.models.backbones import xrv_finding_rows
    from cxrlab.models.module import CXRClassifier

    if not dm.multilabel:
        raise CheckpointError(
            "zero_shot=true scores torchxrayvision's per-finding outputs: use data.task=multilabel"
        )
    import torchxrayvision as xrv

    known = xrv.datasets.default_pathologies
    rows = xrv_finding_rows(dm.classes, known)
    unknown = [c for i, c in enumerate(dm.classes) if i not in rows]
    if unknown:
        raise CheckpointError(
            f"zero_shot=true: torchxrayvision's model has no output for {unknown}; choose "
            f"findings among {list(known)} (data.source.findings)"
        )
    return CXRClassifier(
        backbone="densenet121_xrv", class_names=dm.classes, class_counts=dm.class_counts("train"),
        preprocess=dm.preprocess, pretrained="true", weights=cfg.get("zero_shot_weights"),
        multilabel=True, head="pretrained_findings",
    )  # fmt: skip


def evaluate(cfg: DictConfig) -> dict:
    ckpt_path = cfg.get("ckpt_path")
    zero_shot = bool(cfg.get("zero_shot"))
    if zero_shot:
        if cfg.get("data") is None:
            raise CheckpointError("zero_shot=true evaluates on a dataset: give data=...")
        dm: CXRDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
        dm.select()
        model = zero_shot_model(cfg, dm)
        ckpt_path = f"zero-shot: torchxrayvision {cfg.get('zero_shot_weights')}"
    elif not ckpt_path:
        raise CheckpointError("ckpt_path is required: python eval.py ckpt_path=.../best.ckpt")
    else:
        ckpt = read_checkpoint(ckpt_path)
        model = load_model(ckpt_path)
        if cfg.get("data") is not None:
            dm = hydra.utils.instantiate(cfg.data, _convert_="all")
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

        dm.preprocess = model.preprocess
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
    if zero_shot:  # thresholds per finding on validation, as training chooses them
        from cxrlab.evaluation.thresholds import choose_per_finding

        policy = (cfg.get("evaluation") or {}).get("threshold") or "youden"
        with model.collecting_predictions():
            trainer.validate(model, dataloaders=dm.loader("val"), verbose=False)
        val = model.results["val"]
        model.use_threshold(choose_per_finding(val["labels"].numpy(), val["probs"].numpy(),
                                               policy, model.class_names), str(policy))  # fmt: skip
    model.test_as(split)  # metrics logged as <split>/..., e.g. val/auroc for split=val
    for lg in loggers:  # what was evaluated: the checkpoint, its model and the split
        lg.log_hyperparams(
            {"checkpoint": str(ckpt_path), "split": split, "model": dict(model.hparams)}
        )
    trainer.test(model, dataloaders=dm.loader(split))
    out = Path(cfg.paths.output_dir)
    # bootstrap settings: the command line's, else those of the training run's report
    ev = {
        **model.evaluation_settings,
        **{k: v for k, v in dict(cfg.get("evaluation") or {}).items() if v is not None},
    }
    report = write_split_report(out / "report", dm, model, split, ev, str(ckpt_path))
    tables = None
    if tracked(loggers):  # the split's prediction and worst-error tables, as in training
        from cxrlab.utils.tracking import TrackingSettings, tracked_tables

        tables = tracked_tables(dm, model, split, TrackingSettings())
    log_split(loggers, report, out / "report", model.results[split], dm.classes, model.threshold,
              tables)  # fmt: skip
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
