"""The embedded default: the phantom, generated on first use, read as the Kaggle layout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrlab.data import phantom
from cxrlab.data.sources import kaggle_pneumonia


def index(
    root: str | Path,
    task: str = "binary",
    num_patients: int = 800,
    seed: int = 0,
    progress: bool = True,
) -> tuple[pd.DataFrame, list[str]]:
    cfg = phantom.PhantomConfig(num_patients=num_patients, seed=seed)
    phantom.generate(root, cfg, progress=progress)
    return kaggle_pneumonia.index(root, task)
