"""Pretrained weights: where they come from, fetching them on first use, and their provenance.

Downloads go through the libraries' own code into their own caches, so a file fetched here is
the file torchxrayvision or torchvision would use and vice versa:
- torchxrayvision: ``xrv.utils.download`` into ``xrv.utils.get_cache_dir()``
  (``~/.torchxrayvision/models_data/``); it writes ``<file>.part`` and renames it when complete.
- torchvision: ``torch.hub.download_url_to_file`` into ``<torch.hub.get_dir()>/checkpoints/``
  with the SHA-256 prefix from the file name checked (a temporary file, renamed when good).
Each download has a bounded timeout and a few retries; a file that arrives but does not hold the
network's weights (truncated, corrupted, an HTML error page) is deleted, so nothing half-good
ever counts as weights. ``CXRLAB_WEIGHTS_MIRROR=<base URL>`` fetches the same file names from an
internal mirror (hospital networks) instead of the public URLs; ``CXRLAB_OFFLINE=1`` never
touches the network (the test suite sets it).

Every model records what it started from (``provenance``): the weights' name, file, URL and
SHA-256, or ``none`` with the reason; checkpoints, reports, model cards and loggers show it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrlab.errors import UserError, check_choice

log = logging.getLogger(__name__)

MIRROR_ENV = "CXRLAB_WEIGHTS_MIRROR"
OFFLINE_ENV = "CXRLAB_OFFLINE"
TIMEOUT_S = 30.0  # per network operation (connect, each read): a dead server never hangs a run
RETRIES = 3
RETRY_WAIT_S = 2.0  # times the attempt number, between attempts
_FAILED: dict[Path, str] = {}  # files that could not be had in this process, and why


class WeightsUnavailableError(UserError, FileNotFoundError):
    """Pretrained weights were required (``model.pretrained=true``) and could not be had."""


@dataclass(frozen=True)
class WeightsSource:
    """One pretrained weights file: which library's, its name, URL and place in the cache."""

    library: str  # "torchxrayvision" | "torchvision"
    name: str  # e.g. densenet121-res224-all, ResNet18_Weights.IMAGENET1K_V1
    url: str
    path: Path
    sha256_prefix: str | None = None  # torchvision's file names carry one

    @property
    def download_url(self) -> str:
        mirror = os.environ.get(MIRROR_ENV)
        return f"{mirror.rstrip('/')}/{os.path.basename(self.url)}" if mirror else self.url

    def how_to_place(self) -> str:
        return (
            f"download {self.url} and place it as {self.path} (e.g. `mkdir -p {self.path.parent} "
            f"&& wget {self.url} -O {self.path}`), or set {MIRROR_ENV} to a server that has "
            f"{self.path.name}"
        )


def xrv_source(weights: str) -> WeightsSource:
    import torchxrayvision as xrv

    if weights not in xrv.models.model_urls:
        choices = [k for k in xrv.models.model_urls if k.startswith("densenet")]
        raise UserError(f"model.weights={weights!r}: use one of {choices}")
    url = xrv.models.model_urls[weights]["weights_url"]
    path = Path(os.path.expanduser(xrv.utils.get_cache_dir())) / os.path.basename(url)
    return WeightsSource("torchxrayvision", weights, url, path)


def torchvision_source(weights_enum) -> WeightsSource:
    name = os.path.basename(weights_enum.url)
    m = re.search(r"-([a-f0-9]{6,})\.", name)  # torch.hub's HASH_REGEX
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    return WeightsSource(
        "torchvision", str(weights_enum), weights_enum.url, path, m.group(1) if m else None
    )


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(source: WeightsSource) -> None:
    """One attempt, through the library's own download function."""
    source.path.parent.mkdir(parents=True, exist_ok=True)
    if source.library == "torchxrayvision":
        import torchxrayvision as xrv

        xrv.utils.download(source.download_url, str(source.path))  # timeout (10, 60) s
        return
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT_S)  # torch.hub's urlopen has no timeout of its own
    try:
        torch.hub.download_url_to_file(
            source.download_url, str(source.path), hash_prefix=source.sha256_prefix, progress=True
        )
    finally:
        socket.setdefaulttimeout(previous)


def _check_file(source: WeightsSource, expected_keys) -> None:
    """Raise unless the file loads and holds the weights its network expects."""
    if source.library == "torchxrayvision":
        obj = torch.load(source.path, map_location="cpu", weights_only=False)  # xrv's format
        state = obj.state_dict() if hasattr(obj, "state_dict") else obj
    else:
        state = torch.load(source.path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not state:
        raise ValueError("not a state dict")
    if expected_keys is not None:
        keys = set(expected_keys() if callable(expected_keys) else expected_keys)
        missing = sorted(keys - set(state))
        if missing:
            raise ValueError(f"{len(missing)} of the network's weights missing, e.g. {missing[0]}")


def fetch(source: WeightsSource, expected_keys=None) -> Path:
    """The weights file of ``source``, downloaded on first use; raises WeightsUnavailableError.

    ``expected_keys``: the state-dict keys the file must hold, or a function giving them
    (checked once, after a download). A file that could not be had is not tried again in the
    same process (the early check in train.py and the model builder ask for the same file).
    """
    if source.path.is_file():
        return source.path
    if os.environ.get(OFFLINE_ENV):
        raise WeightsUnavailableError(
            f"Pretrained weights {source.name} ({source.library}) are not in the cache and "
            f"{OFFLINE_ENV} is set, so nothing is downloaded. To use them, "
            f"{source.how_to_place()}; or train without them: model.pretrained=false"
        )
    if source.path in _FAILED:
        raise WeightsUnavailableError(_FAILED[source.path])
    reason = "not tried"
    for attempt in range(1, RETRIES + 1):
        log.info(
            "Downloading %s weights %s from %s to %s (attempt %d of %d)",
            source.library, source.name, source.download_url, source.path, attempt, RETRIES,
        )  # fmt: skip
        try:
            _download(source)
            _check_file(source, expected_keys)
            log.info("Weights %s saved as %s", source.name, source.path)
            return source.path
        except Exception as e:  # network errors, hash mismatch, a file that is not weights
            reason = f"{type(e).__name__}: {e}"
            log.warning("Download of %s failed: %s", source.name, reason)
            source.path.unlink(missing_ok=True)  # never leave a bad file that counts as weights
            Path(str(source.path) + ".part").unlink(missing_ok=True)
            if attempt < RETRIES:
                time.sleep(RETRY_WAIT_S * attempt)
    _FAILED[source.path] = (
        f"Pretrained weights {source.name} ({source.library}) could not be fetched from "
        f"{source.download_url} ({RETRIES} attempts): {reason[:300]}. To use them, "
        f"{source.how_to_place()}; or train without them: model.pretrained=false"
    )
    raise WeightsUnavailableError(_FAILED[source.path])


PRETRAINED_MODES = ("auto", "true", "false")


def check_mode(pretrained) -> str:
    """``model.pretrained`` as one of PRETRAINED_MODES (YAML's true/false arrive as bools)."""
    mode = str(pretrained).lower()
    check_choice(mode, PRETRAINED_MODES, "model.pretrained")
    return mode


def resolve(pretrained, source: WeightsSource, expected_keys=None) -> tuple[Path | None, dict]:
    """(weights file or None, provenance) for ``model.pretrained`` = auto | true | false.

    ``true`` fetches or raises; ``auto`` fetches and, if that fails, trains from scratch with a
    loud warning; ``false`` never looks. The provenance says which, and why.
    """
    mode = check_mode(pretrained)
    if mode == "false":
        return None, none("model.pretrained=false")
    try:
        path = fetch(source, expected_keys)
    except WeightsUnavailableError as e:
        if mode == "true":
            raise
        log.warning("%s TRAINING FROM SCRATCH (model.pretrained=auto).", e)
        return None, none(f"model.pretrained=auto and the weights could not be had: {e}")
    return path, provenance(source)


def provenance(source: WeightsSource) -> dict:
    return {
        "pretrained": True,
        "library": source.library,
        "name": source.name,
        "file": str(source.path),
        "url": source.url,
        "sha256": sha256(source.path),
    }


def from_checkpoint(path: str) -> dict:
    """``model.init_from``: the trunk comes from another run's checkpoint (or state dict)."""
    return {
        "pretrained": True,
        "library": "cxrlab checkpoint (model.init_from)",
        "name": Path(path).name,
        "file": str(path),
        "url": None,
        "sha256": sha256(Path(path)) if Path(path).is_file() else None,
    }


def none(reason: str) -> dict:
    return {"pretrained": False, "reason": reason}


def describe(prov: dict | None) -> str:
    """One line for logs, reports and model cards."""
    if not prov:
        return "unknown (a checkpoint from before cxrlab recorded it)"
    if prov.get("pretrained"):
        digest = f", sha256 {prov['sha256'][:16]}..." if prov.get("sha256") else ""
        return f"{prov['library']} weights {prov['name']} ({prov['file']}{digest})"
    return f"none: trained from scratch ({prov.get('reason', 'no reason recorded')})"
