#!/usr/bin/env bash
# podman build (or docker build: CONTAINER_ENGINE=docker) of the service image with this
# machine's pip settings passed into the install step: its index and extra indexes, local
# wheel folders (file:// indexes and find-links are mounted read-only) and its CA bundle (a
# proxy's certificate authority). Behind a proxy or a mirror, this is what makes pip work in
# the build as it does on the host.
#
#   docker/build.sh [-t TAG] [more build options...]
#
# Environment: BASE_IMAGE (a build argument of the Dockerfile), PIP (the pip whose settings are
# read; default: python3 -m pip).
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${CONTAINER_ENGINE:-podman}
PIP=${PIP:-python3 -m pip}
args=(--format docker --network host)
[ "$ENGINE" = docker ] && args=(--network host)
[ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")

setting() {  # pip's value for a key: the environment first, then its configuration files
  local var="PIP_$(echo "$1" | tr 'a-z-' 'A-Z_')"
  if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
  $PIP config list 2>/dev/null | sed -n "s/^[^.]*\.$1='\(.*\)'$/\1/p" | tail -1
}
mount_local() {  # file:///x/simple or /x: mount the folder (a file index: its parent too)
  local path=${1#file://}
  [ -e "$path" ] || return 0
  case "$path" in */simple|*/simple/) path=$(dirname "${path%/}");; esac
  [ "$ENGINE" = podman ] && args+=(-v "$path:$path:ro")
  return 0
}

for key in index-url extra-index-url find-links; do
  value=$(setting "$key")
  [ -z "$value" ] && continue
  for url in $value; do mount_local "$url"; done
  args+=(--build-arg "$(echo "$key" | tr 'a-z-' 'A-Z_')=$value")
done
cert=$(setting cert)
if [ -n "$cert" ] && [ -f "$cert" ] && [ "$ENGINE" = podman ]; then
  # not under /etc/ssl/certs: the image's ca-certificates package must be able to write there
  args+=(-v "$cert:/run/host-ca.crt:ro" --build-arg CA_CERT=/run/host-ca.crt)
fi
echo "+ $ENGINE build ${args[*]} $*" >&2
exec "$ENGINE" build "${args[@]}" "$@" .
