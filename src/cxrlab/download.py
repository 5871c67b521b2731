"""Dataset catalogue and downloads. For now: the list, and the phantom generated on demand.

Kaggle downloads (kaggle_pneumonia and the others) arrive with the datasets issue; until then
``download_data.py <name>`` prints where to get the files and where to put them.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    url: str
    folder: str  # under data/
    readable: bool  # a source module reads it today


DATASETS = {
    d.name: d
    for d in (
        DatasetInfo(
            "synthetic",
            "cxrlab chest radiograph phantom (embedded, generated locally)",
            "-",
            "synthetic",
            True,
        ),
        DatasetInfo(
            "kaggle_pneumonia",
            "Chest X-Ray Images (Pneumonia), Kermany et al. 2018",
            "https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia",
            "chest-xray-pneumonia",
            True,
        ),
        DatasetInfo(
            "siim_covid",
            "SIIM-FISABIO-RSNA COVID-19 Detection",
            "https://www.kaggle.com/c/siim-covid19-detection",
            "siim-covid",
            False,
        ),
        DatasetInfo(
            "covid_radiography",
            "COVID-19 Radiography Database",
            "https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database",
            "covid-radiography",
            False,
        ),
        DatasetInfo(
            "rsna_pneumonia",
            "RSNA Pneumonia Detection Challenge",
            "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge",
            "rsna-pneumonia",
            False,
        ),
        DatasetInfo(
            "nih", "NIH ChestX-ray14", "https://nihcc.app.box.com/v/ChestXray-NIHCC", "nih", False
        ),
    )
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="List or fetch the datasets cxrlab reads.")
    p.add_argument("dataset", nargs="?", help="a name from --list")
    p.add_argument("--list", action="store_true", help="list the datasets")
    p.add_argument("--root", default="data", help="where datasets live (default: data)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.list or not args.dataset:
        width = max(len(n) for n in DATASETS)
        for d in DATASETS.values():
            state = "ready" if d.readable else "planned"
            print(f"{d.name:<{width}}  [{state}]  {d.title}\n{'':<{width}}  {d.url}")  # noqa: T201
        return 0
    if args.dataset not in DATASETS:
        p.error(f"unknown dataset {args.dataset!r}: use one of {list(DATASETS)}")
    info = DATASETS[args.dataset]
    if info.name == "synthetic":
        from cxrlab.data import phantom

        root = Path(args.root) / "synthetic" / "patients800-seed0"
        phantom.generate(root)
        print(f"phantom ready under {root}")  # noqa: T201
        return 0
    dest = Path(args.root) / info.folder
    print(  # noqa: T201
        f"Automatic download of {info.name} is not implemented yet. Get it from {info.url}\n"
        f"and unpack it under {dest}/ (for kaggle_pneumonia: {dest}/chest_xray/train/...)."
    )
    return 1
