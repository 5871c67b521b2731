"""Which images a run uses and where each goes: filters, balanced subsets, patient-grouped splits.

Split logic lives only here. Every function is deterministic for its seed and never puts one
patient's images in two splits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrlab.errors import UserError, check_integer

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class SelectionError(UserError):
    """A selection setting that the data cannot satisfy; the message names the config key."""


def check_ratios(ratios: Mapping[str, float]) -> dict[str, float]:
    missing = [s for s in SPLITS if s not in ratios]
    extra = [k for k in ratios if k not in SPLITS]
    if missing or extra:
        raise SelectionError(
            f"data.split.ratios must have exactly the keys {list(SPLITS)} "
            f"(missing {missing}, unknown {extra})"
        )
    values = {s: float(ratios[s]) for s in SPLITS}
    if any(v < 0 for v in values.values()) or values["train"] <= 0:
        raise SelectionError(f"data.split.ratios={values}: train must be > 0, none negative")
    total = sum(values.values())
    if abs(total - 1.0) > 1e-6:
        raise SelectionError(f"data.split.ratios={values} sum to {total:g}; they must sum to 1")
    return values


def balanced_subset(
    df: pd.DataFrame, dataset_size: int | None, classes: Sequence[str], seed: int
) -> pd.DataFrame:
    """Equal numbers of images per class, ``dataset_size`` in all (None keeps everything).

    For a binary task the positive class already gathers every positive subtype (e.g. bacterial
    and viral pneumonia), so this is "negative vs all positives" as in original system 002;
    positives are drawn evenly across subtypes where a ``subtype`` column says them.
    """
    if dataset_size is None:
        return df
    dataset_size = int(dataset_size)
    k = len(classes)
    if dataset_size < k or dataset_size % k:
        raise SelectionError(
            f"data.dataset_size={dataset_size} must be a positive multiple of the number of "
            f"classes ({k}: {list(classes)}) to give equal numbers per class"
        )
    per_class = dataset_size // k
    counts = df["label"].value_counts()
    short = {c: int(counts.get(c, 0)) for c in classes if counts.get(c, 0) < per_class}
    if short:
        most = min(int(counts.get(c, 0)) for c in classes) * k
        raise SelectionError(
            f"data.dataset_size={dataset_size} is larger than the data: it needs {per_class} "
            f"images per class but {short} have fewer. Use data.dataset_size<={most} "
            f"or null for all images."
        )
    rng = np.random.default_rng(seed)
    parts = []
    for c in classes:
        rows = df[df["label"] == c]
        parts.append(rows.iloc[_even_draw(rows, per_class, rng)])
    return pd.concat(parts).sort_index()


def _even_draw(rows: pd.DataFrame, n: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``n`` rows, spread as evenly as possible over the ``subtype`` column."""
    if "subtype" not in rows or rows["subtype"].nunique() <= 1:
        return np.sort(rng.choice(len(rows), n, replace=False))
    groups = {s: np.flatnonzero(rows["subtype"].to_numpy() == s) for s in rows["subtype"].unique()}
    for g in groups.values():
        rng.shuffle(g)
    chosen, remaining = [], n
    pending = sorted(groups, key=lambda s: len(groups[s]))
    while pending:
        share = remaining // len(pending)
        s = pending.pop(0)
        take = min(share, len(groups[s])) if pending else min(remaining, len(groups[s]))
        chosen.extend(groups[s][:take])
        remaining -= take
    return np.sort(np.array(chosen))


def _patient_strata(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Each patient's majority label (ties to the first label in sorted order) and image count.

    Vectorized: NIH-sized manifests of 100k images and 30k patients take well under a second.
    """
    counts = df.groupby(["patient_id", "label"], sort=True).size().unstack(fill_value=0)
    counts = counts[sorted(counts.columns)]
    return counts.idxmax(axis=1), counts.sum(axis=1)


def _grouped_assign(
    df: pd.DataFrame, shares: Mapping[str, float], rng: np.random.Generator
) -> dict:
    """{patient: part}: whole patients dealt out to the parts in ``shares`` (name -> fraction).

    Within each (majority) label, patients are shuffled and given one at a time to the part
    furthest below its target share of that label's images; ties go to the earlier part.
    """
    names = list(shares)
    per_patient, sizes = _patient_strata(df)
    assignment: dict = {}
    for label in sorted(per_patient.unique()):
        patients = per_patient.index[per_patient == label].to_numpy()
        order = rng.permutation(len(patients))
        patients = patients[order]
        n_images = sizes.to_numpy()[(per_patient == label).to_numpy()][order].tolist()
        total = float(sum(n_images))
        targets = {s: shares[s] * total for s in names}
        live = [s for s in names if targets[s] > 0]
        filled = dict.fromkeys(names, 0.0)
        for p, n in zip(patients.tolist(), n_images):
            best = max(live, key=lambda s: ((targets[s] - filled[s]) / targets[s], -names.index(s)))
            assignment[p] = best
            filled[best] += n
    return assignment


def patient_grouped_split(df: pd.DataFrame, ratios: Mapping[str, float], seed: int) -> pd.Series:
    """Assign each row to train/val/test so that no patient is in two splits.

    Stratified by each patient's majority label: within each label, patients are shuffled and
    given one at a time to the split furthest below its target share of that label's images.
    Returns a Series of split names aligned with ``df``.
    """
    ratios = check_ratios(ratios)
    if "patient_id" not in df:
        raise SelectionError("the manifest has no patient_id column: cannot split by patient")
    assignment = _grouped_assign(df, ratios, np.random.default_rng(seed))
    return df["patient_id"].map(assignment).rename("split")


def check_folds(folds, fold) -> tuple[int | None, int]:
    """``data.split.folds`` (null or K >= 2) and ``data.split.fold`` (0..K-1)."""
    fold = check_integer(0 if fold is None else fold, "data.split.fold", 0,
                         "use a fold number from 0 to data.split.folds-1")  # fmt: skip
    if folds is None:
        if fold:
            raise SelectionError(
                f"data.split.fold={fold} needs data.split.folds (the number of folds, e.g. "
                f"data.split.folds=5 data.split.fold={fold})"
            )
        return None, 0
    folds = check_integer(folds, "data.split.folds", 2,
                          "use 2 or more folds, or null for one train/val split")  # fmt: skip
    if fold >= folds:
        raise SelectionError(
            f"data.split.fold={fold} with data.split.folds={folds}: folds are numbered 0 to "
            f"{folds - 1} (run them all with -m data.split.fold='range({folds})')"
        )
    return folds, fold


def patient_grouped_folds(
    df: pd.DataFrame,
    test: pd.Series,
    folds: int,
    fold: int,
    seed: int,
    findings: Sequence[str] | None = None,
) -> tuple[pd.Series, pd.Series]:
    """K-fold cross-validation splits: (split, fold number) for each row.

    ``test`` marks the rows held out for testing (the same whatever the fold). The other
    patients are dealt into ``folds`` patient-grouped folds, stratified by majority label as the
    plain split is; fold ``fold`` is the validation split, the others train. The folds depend
    on the seed only, so every fold of one K-fold run sees the same partition. Returns the split
    names and each row's fold (-1 for test rows). ``findings``: a multi-label manifest's
    findings, stratified over as ``multilabel_assign`` does.
    """
    folds, fold = check_folds(folds, fold)
    rest = df[~test.to_numpy()]
    names = [f"fold{k}" for k in range(folds)]
    # a generator of its own: the folds do not change when the test split's draw does
    rng = np.random.default_rng([int(seed), folds])
    shares = dict.fromkeys(names, 1.0 / folds)
    if findings is not None:
        assignment = multilabel_assign(rest, findings, shares, rng)
    else:
        assignment = _grouped_assign(rest, shares, rng)
    number = rest["patient_id"].map(assignment).map(names.index)
    empty = sorted(set(range(folds)) - set(number.unique().tolist()))
    if empty:
        raise SelectionError(
            f"data.split.folds={folds}: folds {empty} got no patients ({rest['patient_id'].nunique()}"
            " patients outside the test split); use fewer folds or more data"
        )
    fold_of = pd.Series(-1, index=df.index, name="fold")
    fold_of.loc[rest.index] = number.astype(int)
    split = pd.Series("test", index=df.index, name="split")
    split.loc[rest.index] = np.where(number.to_numpy() == fold, "val", "train")
    return split, fold_of


def assert_no_leakage(df: pd.DataFrame, split_col: str = "split") -> None:
    """Raise if any patient appears in more than one split (a guard, run on every datamodule)."""
    n = df.groupby("patient_id")[split_col].nunique()
    leaked = n[n > 1]
    if len(leaked):
        raise AssertionError(
            f"{len(leaked)} patients appear in more than one split, e.g. {list(leaked.index[:5])}"
        )


# ------------------------------------------------------------------ multi-label (data.task=multilabel)
TARGET_PREFIX = "y_"


def finding_columns(classes: Sequence[str]) -> list[str]:
    """The manifest's column of each finding: 1 present, 0 absent, NaN unknown (masked)."""
    return [f"{TARGET_PREFIX}{c}" for c in classes]


def finding_matrix(df: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """(images, findings) float array: 1, 0 or NaN (a missing or uncertain label)."""
    return df[finding_columns(classes)].to_numpy(dtype=np.float64)


def multilabel_balanced_subset(
    df: pd.DataFrame, dataset_size: int | None, classes: Sequence[str], seed: int
) -> pd.DataFrame:
    """``dataset_size`` images with every finding as evenly represented as the data allow.

    Findings are served rarest first: each gets up to ``dataset_size // (K + 1)`` images showing
    it (an image counts for every finding it shows, so common findings mostly arrive with the
    rare ones); the rest are images with no finding present, then any images left. None keeps
    everything.
    """
    if dataset_size is None:
        return df
    dataset_size = int(dataset_size)
    if dataset_size > len(df):
        raise SelectionError(
            f"data.dataset_size={dataset_size} is larger than the data ({len(df)} images): "
            f"use data.dataset_size<={len(df)} or null for all images"
        )
    y = np.nan_to_num(finding_matrix(df, classes)) > 0
    rng = np.random.default_rng(seed)
    share = dataset_size // (len(classes) + 1)
    chosen = np.zeros(len(df), dtype=bool)
    for k in np.argsort(y.sum(0), kind="stable"):  # rarest finding first
        have = int((chosen & y[:, k]).sum())
        pool = np.flatnonzero(y[:, k] & ~chosen)
        take = min(max(0, share - have), len(pool), dataset_size - int(chosen.sum()))
        chosen[rng.choice(pool, take, replace=False)] = True
    for pool in (np.flatnonzero(~y.any(1) & ~chosen), np.flatnonzero(~chosen)):
        take = min(len(pool), dataset_size - int(chosen.sum()))
        if take > 0:
            chosen[rng.choice(pool, take, replace=False)] = True
    return df[chosen]


def multilabel_grouped_split(
    df: pd.DataFrame, classes: Sequence[str], ratios: Mapping[str, float], seed: int
) -> pd.Series:
    """train/val/test for multi-label rows, whole patients only, stratified over findings
    (``multilabel_assign``). Returns a Series of split names aligned with ``df``."""
    ratios = check_ratios(ratios)
    if "patient_id" not in df:
        raise SelectionError("the manifest has no patient_id column: cannot split by patient")
    assignment = multilabel_assign(df, classes, ratios, np.random.default_rng(seed))
    return df["patient_id"].map(assignment).rename("split")


def multilabel_assign(
    df: pd.DataFrame, classes: Sequence[str], shares: Mapping[str, float], rng
) -> dict:
    """{patient: part}: whole patients dealt to the parts in ``shares``, stratified over
    findings by iterative stratification (Sechidis, Tsoumakas and Vlahavas 2011) at the patient
    level.

    The finding with the fewest positive patients still unplaced goes first; each of its
    patients (shuffled) joins the part furthest below its target share of that finding's
    positive images, and counts for every finding it has. Patients with no finding present are
    then dealt by image counts, as the single-label split deals them. Rare findings get their
    share as far as whole patients allow.
    """
    names = list(shares)
    share = np.array([float(shares[s]) for s in names])
    live = share > 0
    y = np.nan_to_num(finding_matrix(df, classes)) > 0
    codes, patients = pd.factorize(df["patient_id"], sort=True)
    n_pat = len(patients)
    pos = np.zeros((n_pat, len(classes)))
    np.add.at(pos, codes, y.astype(np.float64))  # positive images per patient and finding
    sizes = np.bincount(codes, minlength=n_pat).astype(np.float64)
    want = share[:, None] * pos.sum(0)[None, :]  # (parts, findings) positive images wanted
    have = np.zeros_like(want)
    want_img = share * sizes.sum()
    have_img = np.zeros(len(names))
    part_of = np.full(n_pat, -1)
    order = range(len(names))

    def need(w, h):
        return np.where(live, (w - h) / np.maximum(w, 1e-9), -np.inf)

    while True:
        open_ = part_of < 0
        counts = (pos[open_] > 0).sum(0)
        if not counts.any():
            break
        k = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        for p in rng.permutation(np.flatnonzero(open_ & (pos[:, k] > 0))):
            nk, ni = need(want[:, k], have[:, k]), need(want_img, have_img)
            # the most need for this finding; ties: the most need for images, then part order
            s = max(order, key=lambda i: (nk[i], ni[i], -i))
            part_of[p] = s
            have[s] += pos[p]
            have_img[s] += sizes[p]
    for p in rng.permutation(np.flatnonzero(part_of < 0)):
        ni = need(want_img, have_img)
        s = max(order, key=lambda i: (ni[i], -i))
        part_of[p] = s
        have_img[s] += sizes[p]
    return dict(zip(patients.tolist(), np.array(names)[part_of].tolist()))
