#!/usr/bin/env bash
# Headless Chromium (Debian's package) for the browser check of the sweep dashboard
# (tests/test_sweep.py: optuna-dashboard's pages as a browser renders them).
set -euo pipefail
if ! command -v chromium >/dev/null; then
  source "$(dirname "$0")/apt.sh"
  apt_install chromium
fi
