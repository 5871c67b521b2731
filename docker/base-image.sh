#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, made locally, for machines that cannot pull
# from a registry (air-gapped hospital networks, this project's CI): debootstrap's minimal
# Debian plus python3, python3-venv and ca-certificates, imported into podman. About a minute.
# Build with it: podman build --build-arg BASE_IMAGE=localhost/cxrlab-base:bookworm ...
#
#   sudo docker/base-image.sh [TAG] [MIRROR]
#
# Needs root and `apt-get install debootstrap podman`. Does nothing when TAG already exists.
# Prints TAG on stdout (progress on stderr).
set -euo pipefail
TAG=${1:-localhost/cxrlab-base:bookworm}
MIRROR=${2:-}
if podman image exists "$TAG"; then
  echo "$TAG exists" >&2
  echo "$TAG"
  exit 0
fi
if [ -z "$MIRROR" ]; then  # the machine's own Debian mirror (deb822 or one-line format)
  MIRROR=$( (grep -hoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list.d/*.sources \
               /etc/apt/sources.list 2>/dev/null || true) | grep -v security | head -1 \
             | awk '{print $2}')
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
ROOT=$(mktemp -d /tmp/cxrlab-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
echo "debootstrap bookworm from $MIRROR" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$ROOT" "$MIRROR" >&2
# what python:3.11-slim leaves out too: package lists and caches, documentation, locales
rm -rf "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
  "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* \
  "$ROOT"/usr/share/locale/*
tar -C "$ROOT" -c . | podman import --change 'CMD ["python3"]' - "$TAG" >&2
echo "$TAG"
