#!/usr/bin/env bash
# What the container tests (tests/test_container.py) need on a machine like CI's: Debian's
# podman and runc (podman's default runtime, crun, fails here on rlimits and cgroups:
# docker/containers.conf selects runc with cgroupfs) and a Debian base image made offline
# (no registry can be reached: docker/base-image.sh). Prints the base image's name on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v podman >/dev/null || ! command -v runc >/dev/null \
   || ! command -v debootstrap >/dev/null; then
  source .ci/apt.sh
  apt_install podman runc debootstrap
fi
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/containers.conf}
bash docker/base-image.sh localhost/cxrlab-base:bookworm
