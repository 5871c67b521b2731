"""Logger factories that need more than a constructor call."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.environ.get("NETRC", str(Path.home() / ".netrc")))
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1]
    return rc.authenticators(host) is not None


def wandb_logger(offline: bool | str = "auto", save_dir: str = ".", **kwargs):
    """A WandbLogger that never waits on a network it cannot reach.

    ``offline=auto`` runs online only when credentials exist; otherwise the run is written to
    ``<save_dir>/wandb/`` and the command that uploads it later is logged.
    """
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    if isinstance(offline, str):
        if offline != "auto":
            raise ValueError(f"logger.wandb.offline={offline!r}: use auto, true or false")
        offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_credentials_present()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if offline:
        log.info(
            "W&B runs offline (no credentials). Upload later with: wandb sync %s",
            Path(save_dir) / "wandb" / "offline-run-*",
        )
    settings = wandb.Settings(init_timeout=60, silent=True)
    return WandbLogger(offline=bool(offline), save_dir=save_dir, settings=settings, **kwargs)
