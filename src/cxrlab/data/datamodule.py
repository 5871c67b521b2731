"""The LightningDataModule: source -> manifest -> selection -> split -> uint8 cache -> loaders.

Batches are ``(uint8 images (B, 1, S, S), labels (B,), row indices (B,))``: augmentation and
normalization happen on the device, in the LightningModule (``on_after_batch_transfer``).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from cxrlab.data.augment import AugmentConfig, albumentations_pipeline
from cxrlab.data.cache import ImageCache, build_cache
from cxrlab.data.preprocess import PreprocessSpec
from cxrlab.data.samplers import DistributedWeightedSampler, class_balanced_weights
from cxrlab.data.selection import (
    SPLITS,
    SelectionError,
    assert_no_leakage,
    balanced_subset,
    check_folds,
    check_ratios,
    finding_matrix,
    multilabel_balanced_subset,
    multilabel_grouped_split,
    patient_grouped_folds,
    patient_grouped_split,
)
from cxrlab.errors import check_choice, check_integer
from cxrlab.utils.nested import as_settings

log = logging.getLogger(__name__)

SOURCES = (
    "synthetic",
    "kaggle_pneumonia",
    "siim_covid",
    "covid_radiography",
    "rsna_pneumonia",
    "nih",
    "folder",
    "csv",
)
TASKS = ("binary", "multiclass", "multilabel")
SPLIT_POLICIES = ("resplit", "official")
BAD_FILE_POLICIES = ("skip", "error")
SAMPLERS = ("shuffle", "weighted")
DEFAULT_RATIOS = {"train": 0.6, "val": 0.2, "test": 0.2}


def check_settings(data: Mapping) -> None:
    """The rules of the ``data.*`` settings this module owns, each naming its key (the
    preprocessing and augmentation check themselves: PreprocessSpec, AugmentConfig). The data
    module's constructor runs them; ``cxrlab.config.validate`` runs the same before any work.
    Keys are the constructor's arguments; a missing one has the constructor's default."""
    source = data.get("source") or {}
    check_choice(source.get("name"), SOURCES, "data.source.name")
    check_choice(data.get("task", "binary"), TASKS, "data.task")
    split = data.get("split") or {}
    check_choice(split.get("policy", "resplit"), SPLIT_POLICIES, "data.split.policy")
    check_ratios(split.get("ratios", DEFAULT_RATIOS))
    check_folds(split.get("folds"), split.get("fold", 0))
    images = "use a whole number of images >= 1"
    check_integer(data.get("batch_size", 32), "data.batch_size", 1, images)
    if data.get("eval_batch_size") is not None:
        check_integer(data["eval_batch_size"], "data.eval_batch_size", 1,
                      f"{images} (or null: data.batch_size)")  # fmt: skip
    check_integer(data.get("num_workers", 2), "data.num_workers", 0,
                  "use 0 (no loader processes) or more")  # fmt: skip
    for key in ("dataset_size", "epoch_size"):
        if data.get(key) is not None:
            check_integer(data[key], f"data.{key}", 1, "use a positive number or null")
    check_choice(data.get("on_bad_file", "skip"), BAD_FILE_POLICIES, "data.on_bad_file")
    check_choice(data.get("sampler", "shuffle"), SAMPLERS, "data.sampler")
    if data.get("task") == "multilabel" and data.get("sampler") == "weighted":
        raise SelectionError(
            "data.sampler=weighted draws by class, and a multi-label image has several: use "
            "data.sampler=shuffle with model.loss.name=weighted_bce (per-finding positive "
            "weights) or focal"
        )


class CachedImages(Dataset):
    """Some rows of the cache: (uint8 tensor (1, S, S), label, row index).

    The cache is built from the manifest in its order, so a row index addresses both the cached
    image and the manifest row (path, patient) that predictions are joined back to.
    ``transform`` (the albumentations path, ``augment.device=cpu``) runs per image in the
    DataLoader workers; by default there is none and augmentation happens on the device.
    """

    def __init__(self, cache: ImageCache, rows: np.ndarray, labels: np.ndarray, transform=None):
        self.cache, self.rows, self.labels, self.transform = cache, rows, labels, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        img = np.array(self.cache.images[self.rows[i]])
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        label = self.labels[i]
        # single-label: the class index; multi-label: float findings (1, 0, NaN: unknown)
        label = int(label) if np.ndim(label) == 0 else torch.from_numpy(label)
        return torch.from_numpy(img).unsqueeze(0), label, int(self.rows[i])


def load_source(name: str):
    check_choice(name, SOURCES, "data.source.name")
    return importlib.import_module(f"cxrlab.data.sources.{name}")


class CXRDataModule(pl.LightningDataModule):
    def __init__(
        self,
        source: Mapping,
        task: str = "binary",
        dataset_size: int | None = None,
        split: Mapping | None = None,
        preprocess: Mapping | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        cache_dir: str = "data/cache",
        on_bad_file: str = "skip",
        seed: int = 0,
        progress: bool = True,
        augment: Mapping | None = None,
        sampler: str = "shuffle",
        epoch_size: int | None = None,
    ):
        super().__init__()
        check_settings(
            dict(source=source, task=task, dataset_size=dataset_size, split=split,
                 batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                 on_bad_file=on_bad_file, sampler=sampler, epoch_size=epoch_size)
        )  # fmt: skip
        # saved in checkpoints: eval.py rebuilds the same selection from a checkpoint alone
        self.save_hyperparameters(logger=False)  # in checkpoints; loggers get the run config
        self.source = dict(source)
        self.source_name = self.source.pop("name", None)
        self.task = task
        self.dataset_size = None if dataset_size is None else int(dataset_size)
        split = dict(split or {})
        self.split_policy = split.get("policy", "resplit")
        self.ratios = check_ratios(split.get("ratios", DEFAULT_RATIOS))
        self.split_seed = int(split.get("seed", seed))
        # k-fold cross-validation: the test split held out once, the rest in K folds
        self.folds, self.fold = check_folds(split.get("folds"), split.get("fold", 0))
        self.preprocess = as_settings(PreprocessSpec, preprocess)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.cache_dir = Path(cache_dir)
        self.on_bad_file = on_bad_file
        self.seed = int(seed)
        self.progress = progress
        self.sampler = sampler
        self.epoch_size = None if epoch_size is None else int(epoch_size)
        self.augment_cfg = as_settings(AugmentConfig, augment)
        # checkpoints keep plain dictionaries (loadable with weights_only=True), whatever came in
        self.hparams.update(
            preprocess=self.preprocess.to_dict(), augment=self.augment_cfg.to_dict()
        )
        self.manifest: pd.DataFrame | None = None
        self._index: tuple[pd.DataFrame, list[str]] | None = None
        self.classes: list[str] = []
        self.skipped: dict[str, str] = {}
        self.dropped: dict[str, int] = {}
        self._sets: dict[str, CachedImages] = {}

    # ------------------------------------------------------------------ selection
    def index(self) -> tuple[pd.DataFrame, list[str]]:
        """The source's whole manifest (every image, before subset and split) and classes."""
        if self._index is not None:
            return self._index
        src = load_source(self.source_name)
        kwargs = dict(self.source)
        known = set(inspect.signature(src.index).parameters)
        if "progress" in known:
            kwargs.setdefault("progress", self.progress)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise SelectionError(
                f"data.source: {unknown} are not settings of the {self.source_name} source "
                f"(its settings: {sorted(known - {'task', 'progress'})}); remove them, e.g. "
                f"~data.source.{unknown[0]}"
            )
        df, classes = src.index(task=self.task, **kwargs)
        if self.multilabel and not any(str(c).startswith("y_") for c in df.columns):
            raise SelectionError(
                f"data.task=multilabel: {self.source_name} has one label per image; "
                "multi-label findings come from data=nih or data=csv (a|b labels or one column "
                "per finding)"
            )
        # rows the source left out and why (label rows without files, lateral views, ...)
        self.dropped = dict(df.attrs.get("dropped", {}))
        if self.dropped:
            log.info("%s: left out %s", self.source_name, self.dropped)
        self.classes = list(classes)
        self._index = (df, self.classes)
        return self._index

    def select(self) -> pd.DataFrame:
        """Index, subset and split; returns the manifest of the run with a ``split`` column.

        Cheap (no image decoding besides generating the phantom on first use), so bad settings
        such as a too-large ``dataset_size`` fail here, before any training work.
        """
        if self.manifest is not None:
            return self.manifest
        df, classes = self.index()
        if self.multilabel:
            df = multilabel_balanced_subset(df, self.dataset_size, self.classes, self.seed)
        else:
            df = balanced_subset(df, self.dataset_size, self.classes, self.seed)
        if self.split_policy == "official":
            if "official_split" not in df:
                raise SelectionError(
                    f"data.split.policy=official: {self.source_name} has no "
                    "official split; use data.split.policy=resplit"
                )
            split = df["official_split"]
        elif self.multilabel:
            split = multilabel_grouped_split(df, self.classes, self.ratios, self.split_seed)
        else:
            split = patient_grouped_split(df, self.ratios, self.split_seed)
        if self.folds is not None:
            # the test split exactly as without folds (same seed and ratios: the same test
            # images as a plain run); train and val pooled and dealt into the folds
            split, fold = patient_grouped_folds(
                df, split == "test", self.folds, self.fold, self.split_seed,
                findings=self.classes if self.multilabel else None,
            )  # fmt: skip
            df = df.assign(fold=fold)
            log.info(
                "Cross-validation: fold %d of %d validates (%d images), the other folds train "
                "(%d images); the test split (%d images) is held out from every fold",
                self.fold, self.folds, int((split == "val").sum()),
                int((split == "train").sum()), int((split == "test").sum()),
            )  # fmt: skip
        df = df.assign(split=split)
        assert_no_leakage(df)
        for s in SPLITS:
            wanted = self.ratios.get(s, 0) > 0 or (s == "val" and self.folds is not None)
            if wanted and not (df["split"] == s).any():
                raise SelectionError(f"the {s} split is empty: use more data or other ratios")
        self.manifest = df.reset_index(drop=True)
        return self.manifest

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def class_counts(self, split: str = "train") -> list[int]:
        """Images per class of a split; multi-label: images showing each finding."""
        df = self.select()
        part = df[df["split"] == split]
        if self.multilabel:
            return [int(v) for v in np.nansum(finding_matrix(part, self.classes), 0)]
        counts = part["label"].value_counts()
        return [int(counts.get(c, 0)) for c in self.classes]

    def finding_counts(self, split: str = "train") -> tuple[list[int], list[int]]:
        """Multi-label: (positive, negative) images of each finding in a split; unknown
        labels count in neither."""
        y = finding_matrix(self.select()[self.select()["split"] == split], self.classes)
        return [int(v) for v in (y == 1).sum(0)], [int(v) for v in (y == 0).sum(0)]

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if self._sets:
            return
        df = self.select()
        cache = build_cache(
            df["path"].tolist(),
            self.preprocess,
            self.cache_dir,
            workers=max(1, self.num_workers),
            progress=self.progress,
        )
        bad = cache.unreadable
        if bad:
            listing = "\n".join(f"  {p}: {r}" for p, r in list(bad.items())[:20])
            if self.on_bad_file == "error":
                raise SelectionError(
                    f"{len(bad)} unreadable images (data.on_bad_file=error):\n{listing}"
                )
            log.warning(
                "Skipping %d unreadable images (data.on_bad_file=skip):\n%s", len(bad), listing
            )
        self.skipped = dict(bad)
        label_index = {c: i for i, c in enumerate(self.classes)}
        targets = finding_matrix(df, self.classes).astype(np.float32) if self.multilabel else None
        for s in SPLITS:
            rows = np.flatnonzero((df["split"] == s).to_numpy() & ~df["path"].isin(bad).to_numpy())
            if self.multilabel:
                labels = targets[rows]
            else:
                labels = df["label"].iloc[rows].map(label_index).to_numpy()
            transform = None
            if s == "train" and self.augment_cfg.device == "cpu":
                transform = albumentations_pipeline(self.augment_cfg, self.preprocess.size)
            self._sets[s] = CachedImages(cache, rows, labels, transform)

    def dataset(self, split: str) -> CachedImages:
        self.setup()
        return self._sets[split]

    def loader(self, split: str, train: bool = False) -> DataLoader:
        sampler = None
        if train and self.sampler == "weighted":
            # class-balanced draws with replacement; disjoint shards per DDP rank
            labels = self.dataset(split).labels
            sampler = DistributedWeightedSampler(
                class_balanced_weights(labels), self.epoch_size or len(labels), seed=self.seed
            )
        elif (
            not train
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            # evaluation shards without DistributedSampler's padding: every image is counted
            # once in the synchronized metrics that checkpointing and early stopping monitor
            sampler = UnrepeatedDistributedSampler(self.dataset(split), shuffle=False)
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(self.dataset(split)) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", False)

    def splits_frame(self) -> pd.DataFrame:
        """``splits.csv``: each selected image's split, and why it is skipped if it is
        (``unreadable``: empty for the images the run uses). train.py and explore.py write
        the same file, so one can be checked against the other."""
        self.setup()
        df = self.select()
        cols = [c for c in ("path", "patient_id", "label", "split", "fold") if c in df]
        out = df[cols].copy()
        out["unreadable"] = df["path"].map(self.skipped).fillna("")
        return out

    def describe(self) -> dict:
        """Images, patients and class counts per split: goes into run files and reports."""
        df = self.select()
        out = {}
        for s in SPLITS:
            part = df[(df["split"] == s) & ~df["path"].isin(self.skipped)]
            if self.multilabel:  # images showing each finding
                y = finding_matrix(part, self.classes)
                counts = {c: int(v) for c, v in zip(self.classes, (y == 1).sum(0))}
            else:
                counts = {c: int((part["label"] == c).sum()) for c in self.classes}
            out[s] = {
                "images": int(len(part)),
                "patients": int(part["patient_id"].nunique()),
                "classes": counts,
            }
        return out
