"""The codebase's own rules: every Python file of the project is linted and formatted."""

import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_every_tracked_python_file_is_linted_and_formatted():
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    if not tracked:  # not a git checkout (an sdist): nothing to compare with
        return
    shown = {
        str(Path(p).resolve().relative_to(ROOT))
        for p in ruff("check", "--show-files").stdout.split()
        if p.endswith(".py")
    }
    assert sorted(set(tracked) - shown) == []  # e.g. a folder named data/ excluded by mistake
    check = ruff("check", ".")
    assert check.returncode == 0, check.stdout[-3000:]
    fmt = ruff("format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout[-3000:]
