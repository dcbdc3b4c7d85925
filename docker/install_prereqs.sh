#!/usr/bin/env bash
# What the Docker tests need on a Debian machine: Debian's docker.io (daemon and a BuildKit-capable
# client) and debootstrap (the local base image). Installs them when missing and run as root;
# otherwise says why the Docker tests will not run. Never fails `make test` by itself: the
# tests decide (they skip with the reason, or fail under CI=true).
set -uo pipefail
missing=()
command -v dockerd >/dev/null && [ -x /usr/bin/docker ] || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
[ ${#missing[@]} -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "docker tests: need ${missing[*]} (apt-get as root); they will not run here" >&2; exit 0
fi
echo "installing ${missing[*]} for the Docker tests ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || echo "docker tests: apt-get install ${missing[*]} failed" >&2
exit 0
