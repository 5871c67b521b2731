"""User mistakes versus bugs: what an entry point reports as one line, and how.

A ``UserError`` (a wrong key or value, a missing data root, a dataset that does not match its
layout, a file that is not a checkpoint) is the user's to fix: the entry point prints one
short message naming the key, the value and what to do, writes the traceback to the run's log
file only, and exits with status 2. Anything else is a bug and keeps its traceback.
``HYDRA_FULL_ERROR=1`` (Hydra's own switch) or ``CXRLAB_DEBUG=1`` shows the traceback of user
errors too.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback

log = logging.getLogger(__name__)
EXIT_USER_ERROR = 2


class UserError(ValueError):
    """A mistake in the user's settings or data; the message says which and what to do."""


class ConfigError(UserError):
    """A config value that breaks its rule; the message names the key."""


def check_choice(value, allowed, key: str) -> None:
    """A choice setting (a name-to-class table or a list of names): ``key=value`` must be one
    of ``allowed``, or a ConfigError names the key and the choices. Each setting's owner calls
    it in its ``check_settings``, which its constructor and ``config.validate`` both run."""
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed: use one of {list(allowed)}")


def check_integer(value, key: str, minimum: int, hint: str) -> int:
    """``value`` as an int >= ``minimum`` (ints or their text; not bools or floats), or a
    ConfigError naming ``key`` with ``hint``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        ok = False
    else:
        try:
            value, ok = int(value), True
        except ValueError:
            ok = False
    if not ok or value < minimum:
        raise ConfigError(f"{key}={value!r}: {hint}")
    return value


def _debug() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or bool(os.environ.get("CXRLAB_DEBUG"))


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        return False


def _log_files() -> list[str]:
    return [
        h.baseFilename
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler) and getattr(h, "baseFilename", None)
    ]


def exit_on_user_error(fn):
    """Wrap an entry point's task function: user errors end it with one line and status 2.

    Inside a Hydra multirun (a sweep) the error is raised as usual, so the sweeper records it
    as that trial's failure reason and goes on with the next trial.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if _debug() or _in_multirun():
                raise
            files = _log_files()
            for path in files:  # the traceback belongs in the log, not on the screen
                with open(path, "a") as f:
                    f.write("".join(traceback.format_exception(e)))
            where = f" (traceback in {files[0]})" if files else ""
            sys.stderr.write(f"Error: {e}{where}\n")
            sys.exit(EXIT_USER_ERROR)

    return wrapper
