"""download_data.py: the Kaggle client is replaced at its boundary by one that hands over a
local archive of a real layout; the archive check, extraction, verification and idempotence
run for real. The real client is exercised up to the point where it would need the internet."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import layouts
import pytest
from conftest import ROOT

from cxrlab.download import MARKER, DownloadError, fetch, main


class LocalArchiveClient:
    """Hands over ``archive`` (or a truncated copy of it ``broken`` times first)."""

    def __init__(self, archive: Path, broken: int = 0):
        self.archive, self.broken, self.calls = archive, broken, []

    def download(self, ref: str, kind: str, dest: Path) -> Path:
        self.calls.append((ref, kind))
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / f"{ref.split('/')[-1]}.zip"
        data = self.archive.read_bytes()
        if len(self.calls) <= self.broken:
            data = data[: len(data) // 2]  # an interrupted transfer
        out.write_bytes(data)
        return out


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(folder))
    return archive


@pytest.fixture(scope="module")
def archives(tiny_phantom, tmp_path_factory):
    """Kaggle-shaped archives: a dataset (covid_radiography) and a competition (rsna)."""
    base = tmp_path_factory.mktemp("archives")
    out = {}
    for name, build in (("covid_radiography", layouts.covid_radiography), ("rsna", layouts.rsna)):
        build(tiny_phantom, base / name)
        n = sum(1 for f in (base / name).rglob("*") if f.suffix in (".png", ".dcm")
                and "masks" not in f.parts)  # fmt: skip
        out[name] = (zip_folder(base / name, base / f"{name}.zip"), n)
    return out


def test_download_extracts_verifies_and_is_idempotent(archives, tmp_path):
    archive, n = archives["covid_radiography"]
    client = LocalArchiveClient(archive)
    dest = fetch("covid_radiography", tmp_path, client, expected=n)
    assert client.calls == [("tawsifurrahman/covid19-radiography-database", "dataset")]
    marker = json.loads((dest / MARKER).read_text())
    assert marker["image_files"] == n and marker["classes"][0] == "normal"
    assert not list((dest / "_download").glob("*.zip"))  # the archive is removed once verified
    fetch("covid_radiography", tmp_path, client, expected=n)
    assert len(client.calls) == 1  # a second run does nothing


def test_competition_download_and_a_broken_archive_is_fetched_again(archives, tmp_path):
    archive, n = archives["rsna"]
    staged = tmp_path / "rsna-pneumonia" / "_download" / "rsna-pneumonia-detection-challenge.zip"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(archive.read_bytes()[:1000])  # left by an interrupted earlier run
    client = LocalArchiveClient(archive, broken=1)  # and the first new transfer breaks too
    fetch("rsna_pneumonia", tmp_path, client, expected=n)
    assert client.calls == [("rsna-pneumonia-detection-challenge", "competition")] * 2
    assert (tmp_path / "rsna-pneumonia" / MARKER).is_file()
    always_broken = LocalArchiveClient(archive, broken=99)
    with pytest.raises(DownloadError, match="broken twice"):
        fetch("rsna_pneumonia", tmp_path / "again", always_broken, expected=n)


def test_counts_are_checked_against_the_published_numbers(archives, tmp_path, capsys):
    archive, n = archives["covid_radiography"]
    code = main(["covid_radiography", "--root", str(tmp_path)], client=LocalArchiveClient(archive))
    out = capsys.readouterr().out
    assert code == 1 and f"found {n} image files" in out and "expected 21165" in out
    assert not (tmp_path / "covid-radiography" / MARKER).exists()


def test_wrong_layout_is_named(tmp_path):
    wrong = tmp_path / "wrong"
    (wrong / "pictures").mkdir(parents=True)
    (wrong / "pictures" / "a.png").write_bytes(b"x")
    archive = zip_folder(wrong, tmp_path / "wrong.zip")
    with pytest.raises(
        DownloadError, match="not the expected layout.*COVID-19_Radiography_Dataset"
    ):
        fetch("covid_radiography", tmp_path / "data", LocalArchiveClient(archive))


def test_zip_slip_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../../outside.txt", "x")
    with pytest.raises(DownloadError, match="points outside"):
        fetch("covid_radiography", tmp_path / "data", LocalArchiveClient(archive))
    assert not (tmp_path / "outside.txt").exists()


def test_without_credentials_the_message_says_how_and_the_manual_route_works(
    archives, tmp_path, monkeypatch
):
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    with pytest.raises(DownloadError) as e:
        fetch("covid_radiography", tmp_path)  # the real client: stops before any network use
    msg = str(e.value)
    assert "kaggle.com/settings/api" in msg and "access_token" in msg
    staged = tmp_path / "covid-radiography" / "_download" / "covid19-radiography-database.zip"
    assert "save the archive from https://www.kaggle.com/datasets/tawsifurrahman" in msg
    assert str(staged) in msg
    # the user follows it: the archive saved by hand is used, no credentials needed
    archive, n = archives["covid_radiography"]
    shutil.copy(archive, staged)
    fetch("covid_radiography", tmp_path, expected=n)
    assert (tmp_path / "covid-radiography" / MARKER).is_file()


def test_nih_prints_the_manual_steps_then_verifies_what_the_user_unpacked(tiny_phantom, tmp_path):
    with pytest.raises(DownloadError, match="(?s)not on the Kaggle API.*images_001.tar.gz"):
        fetch("nih", tmp_path)
    info = layouts.nih(tiny_phantom, tmp_path / "nih")
    n = len(info["table"]) - info["missing"]
    fetch("nih", tmp_path, expected=n)
    assert json.loads((tmp_path / "nih" / MARKER).read_text())["image_files"] == n


def test_cli_list_shows_what_is_downloaded(archives, tmp_path):
    archive, n = archives["covid_radiography"]
    fetch("covid_radiography", tmp_path, LocalArchiveClient(archive), expected=n)
    out = subprocess.run(
        [sys.executable, str(ROOT / "download_data.py"), "--list", "--root", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(ln for ln in out.splitlines() if ln.startswith("covid_radiography"))
    assert "[downloaded]" in line
    assert "[manual steps]" in next(ln for ln in out.splitlines() if ln.startswith("nih"))
