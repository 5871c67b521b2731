"""Dataset catalogue and downloads: ``python download_data.py --list | <name> [--root data]``.

Kaggle datasets and competitions come through the Kaggle API (the ``kaggle`` package), behind
one small boundary, ``KaggleClient.download(ref, kind, dest) -> archive``, so everything after
the transfer (archive check, safe extraction, layout and count verification, the completion
marker) runs the same for a real download, a test's local archive and an archive the user
fetched by hand and put where cxrlab looks (``<root>/<folder>/_download/<name>.zip``).

Idempotent: a verified dataset carries ``.cxrlab-download.json`` and a second run does nothing;
a broken archive (an interrupted transfer) is detected with a CRC check and fetched again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)
MARKER = ".cxrlab-download.json"


class DownloadError(RuntimeError):
    """A download that cannot go on; the message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    url: str
    folder: str  # under the data root
    kind: str  # dataset | competition (Kaggle API), manual, generated
    ref: str = ""  # Kaggle owner/slug or competition name
    images: int = 0  # image files in a complete download (the published counts)
    terms: str = ""
    files: tuple[str, ...] = ()  # globs under the dataset folder that count those files


DATASETS = {
    d.name: d
    for d in (
        DatasetInfo(
            "synthetic", "cxrlab chest radiograph phantom (embedded, generated locally)", "-",
            "synthetic", "generated", terms="part of cxrlab",
        ),
        DatasetInfo(
            "kaggle_pneumonia", "Chest X-Ray Images (Pneumonia), Kermany et al. 2018",
            "https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia",
            "chest-xray-pneumonia", "dataset", "paultimothymooney/chest-xray-pneumonia", 5856,
            "CC BY 4.0",
            files=tuple(f"chest_xray/{s}/{c}/*.jpeg" for s in ("train", "val", "test")
                        for c in ("NORMAL", "PNEUMONIA")),
        ),
        DatasetInfo(
            "siim_covid", "SIIM-FISABIO-RSNA COVID-19 Detection (2021)",
            "https://www.kaggle.com/c/siim-covid19-detection", "siim-covid", "competition",
            "siim-covid19-detection", 6334, "competition rules (accept them on the page first)",
            files=("train/*/*/*.dcm",),
        ),
        DatasetInfo(
            "covid_radiography", "COVID-19 Radiography Database (Chowdhury, Rahman et al.)",
            "https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database",
            "covid-radiography", "dataset", "tawsifurrahman/covid19-radiography-database", 21165,
            "see the dataset page; cite its two papers",
            files=("COVID-19_Radiography_Dataset/*/images/*.png",),
        ),
        DatasetInfo(
            "rsna_pneumonia", "RSNA Pneumonia Detection Challenge (2018)",
            "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge", "rsna-pneumonia",
            "competition", "rsna-pneumonia-detection-challenge", 26684,
            "competition rules (accept them on the page first)",
            files=("stage_2_train_images/*.dcm",),
        ),
        DatasetInfo(
            "nih", "NIH ChestX-ray14 (Wang et al. 2017)",
            "https://nihcc.app.box.com/v/ChestXray-NIHCC", "nih", "manual", images=112120,
            terms="NIH Clinical Center terms: unrestricted use, acknowledge the NIH CC",
            files=("images*/images/*.png",),
        ),
    )
}  # fmt: skip

NIH_STEPS = """NIH ChestX-ray14 is not on the Kaggle API in full. To get it:
  1. open https://nihcc.app.box.com/v/ChestXray-NIHCC (or run the batch_download_zips.py
     script published there, which fetches images_001.tar.gz ... images_012.tar.gz, 42 GB);
  2. unpack every images_0XX.tar.gz under {dest}/ (they unpack to images/; keep one folder
     per archive, e.g. {dest}/images_001/images/00000001_000.png);
  3. put Data_Entry_2017_v2020.csv in {dest}/ (torchxrayvision ships a gzipped copy, which
     cxrlab also reads: {shipped});
  4. run `python download_data.py nih` again to verify, then `python train.py data=nih`."""


class KaggleClient(Protocol):
    def download(self, ref: str, kind: str, dest: Path) -> Path:
        """Fetch ``ref`` (a dataset or competition) into ``dest``; return the archive's path."""


def kaggle_credentials() -> str | None:
    """Where the Kaggle credentials come from, or None."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    for name in ("kaggle.json", "access_token"):
        if (folder / name).is_file():
            return str(folder / name)
    return None


class KaggleApiClient:
    """The real client: the ``kaggle`` package's API, authenticated from the usual places."""

    def __init__(self):
        if kaggle_credentials() is None:
            raise DownloadError(
                "No Kaggle credentials. Create an API token at https://www.kaggle.com/settings/api"
                " (Generate New Token) and either save it to ~/.kaggle/access_token, export "
                "KAGGLE_API_TOKEN=<token>, or put the legacy kaggle.json in ~/.kaggle/ "
                "(or export KAGGLE_USERNAME and KAGGLE_KEY). Or download the archive in a browser"
                " and put it where the next message says."
            )
        from kaggle.api.kaggle_api_extended import KaggleApi

        self.api = KaggleApi()
        try:
            self.api.authenticate()
        except SystemExit as e:  # the package exits after printing its help
            raise DownloadError("Kaggle rejected the credentials (see above)") from e

    def download(self, ref: str, kind: str, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        if kind == "competition":
            self.api.competition_download_files(ref, path=str(dest), quiet=False)
        else:
            self.api.dataset_download_files(ref, path=str(dest), quiet=False, unzip=False)
        return dest / f"{ref.split('/')[-1]}.zip"


def archive_ok(path: Path) -> bool:
    """A complete zip whose every member passes its CRC check."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def safe_extract(archive: Path, dest: Path) -> None:
    """Unzip into ``dest``, refusing members that would land outside it (zip slip)."""
    dest = dest.resolve()
    with zipfile.ZipFile(archive) as z:
        for m in z.infolist():
            target = (dest / m.filename).resolve()
            if not target.is_relative_to(dest):
                raise DownloadError(f"{archive}: member {m.filename!r} points outside {dest}")
        z.extractall(dest)


def verify(info: DatasetInfo, dest: Path, expected: int | None = None) -> dict:
    """The layout must index with the dataset's own source, and the image files must number the
    published count (or ``expected``). Returns what was found."""
    from cxrlab.data.datamodule import load_source
    from cxrlab.data.sources import SourceError

    try:
        df, classes = load_source(info.name).index(dest)
    except SourceError as e:
        raise DownloadError(
            f"{info.name}: the files under {dest} are not the expected layout: {e}"
        ) from e
    found = sum(1 for g in info.files for _ in dest.glob(g))
    want = info.images if expected is None else expected
    if want and found != want:
        raise DownloadError(
            f"{info.name}: found {found} image files under {dest} ({', '.join(info.files)}), "
            f"expected {want}: the download or extraction is incomplete. Run again with --force."
        )
    return {"image_files": found, "indexed": len(df), "patients": int(df["patient_id"].nunique()),
            "classes": classes, "left_out": df.attrs.get("dropped", {})}  # fmt: skip


def fetch(
    name: str,
    root: str | Path = "data",
    client: KaggleClient | None = None,
    force: bool = False,
    keep_archive: bool = False,
    expected: int | None = None,
) -> Path:
    """Download, extract and verify ``name`` under ``root``; return the dataset folder."""
    if name not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r}: use one of {list(DATASETS)}")
    info = DATASETS[name]
    dest = Path(root) / info.folder
    if info.kind == "generated":
        from cxrlab.data import phantom

        out = dest / "patients800-seed0"
        phantom.generate(out)
        return out
    marker = dest / MARKER
    if marker.is_file() and not force:
        log.info(
            "%s is already downloaded and verified (%s); --force fetches it again", name, marker
        )
        return dest
    if info.kind == "manual":
        if dest.is_dir():
            summary = verify(info, dest, expected)
            marker.write_text(json.dumps({"dataset": name, **summary}, indent=2))
            log.info("%s verified under %s: %s", name, dest, summary)
            return dest
        import torchxrayvision

        shipped = Path(torchxrayvision.__file__).parent / "data" / "Data_Entry_2017_v2020.csv.gz"
        raise DownloadError(NIH_STEPS.format(dest=dest, shipped=shipped))
    staging = dest / "_download"
    archive = staging / f"{info.ref.split('/')[-1]}.zip"
    staging.mkdir(parents=True, exist_ok=True)  # also where an archive saved by hand goes
    if force and archive.exists():
        archive.unlink()
    if archive.exists() and not archive_ok(archive):
        log.warning("%s is broken or incomplete (CRC check failed): fetching it again", archive)
        archive.unlink()
    for attempt in (1, 2):
        if archive.exists():
            break
        if client is None:
            try:
                client = KaggleApiClient()
            except DownloadError as e:
                raise DownloadError(
                    f"{e}\nManual route: save the archive from {info.url} as {archive}"
                ) from e
        log.info("Downloading %s (%s) from Kaggle into %s", name, info.ref, staging)
        try:
            got = client.download(info.ref, info.kind, staging)
        except DownloadError:
            raise
        except Exception as e:  # network, HTTP 401/403 (rules not accepted), disk full
            hint = (
                f" Accept the rules at {info.url}/rules first."
                if info.kind == "competition"
                else ""
            )
            raise DownloadError(
                f"Downloading {info.ref} from Kaggle failed ({type(e).__name__}: {e}).{hint} "
                f"Or save the archive from {info.url} as {archive} and run again."
            ) from e
        if Path(got) != archive and Path(got).exists():
            shutil.move(str(got), archive)
        if not archive_ok(archive):
            log.warning("The downloaded archive is broken (attempt %d): fetching it again", attempt)
            archive.unlink(missing_ok=True)
    if not archive.exists():
        raise DownloadError(
            f"{info.ref}: the archive was broken twice; check disk space and network"
        )
    log.info("Extracting %s", archive)
    safe_extract(archive, dest)
    summary = verify(info, dest, expected)
    marker.write_text(json.dumps({"dataset": name, "archive": archive.name, **summary}, indent=2))
    if not keep_archive:
        archive.unlink()
    log.info("%s ready under %s: %s", name, dest, summary)
    return dest


def main(argv: list[str] | None = None, client: KaggleClient | None = None) -> int:
    p = argparse.ArgumentParser(description="List, fetch and verify the datasets cxrlab reads.")
    p.add_argument("dataset", nargs="?", help="a name from --list")
    p.add_argument("--list", action="store_true", help="list the datasets")
    p.add_argument("--root", default="data", help="where datasets live (default: data)")
    p.add_argument("--force", action="store_true", help="fetch and verify again")
    p.add_argument("--keep-archive", action="store_true", help="keep the .zip after extraction")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.list or not args.dataset:
        width = max(len(n) for n in DATASETS)
        for d in DATASETS.values():
            there = (Path(args.root) / d.folder / MARKER).is_file()
            how = {"dataset": "Kaggle API", "competition": "Kaggle API (competition)",
                   "manual": "manual steps", "generated": "generated here"}[d.kind]  # fmt: skip
            state = "downloaded" if there else how
            print(f"{d.name:<{width}}  {d.title} [{state}]\n{'':<{width}}  {d.url}")  # noqa: T201
        return 0
    if args.dataset not in DATASETS:
        p.error(f"unknown dataset {args.dataset!r}: use one of {list(DATASETS)}")
    try:
        dest = fetch(args.dataset, args.root, client, args.force, args.keep_archive)
    except DownloadError as e:
        print(f"download_data.py {args.dataset}: {e}")  # noqa: T201
        return 1
    print(f"{args.dataset} ready under {dest}: python train.py data={args.dataset}")  # noqa: T201
    return 0
