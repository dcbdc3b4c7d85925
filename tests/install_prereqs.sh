#!/usr/bin/env bash
# System packages some tests need on a Debian machine, installed when missing and run as root:
# - docker.io (daemon and a BuildKit-capable client) and debootstrap (the local base image) for
#   the Docker tests;
# - chromium and chromium-driver (the same version, from Debian) for the report's browser test.
# Otherwise says which tests will not run. Never fails `make test` by itself: the tests decide
# (they skip with the reason, or fail under CI=true).
set -uo pipefail
missing=()
command -v dockerd >/dev/null && [ -x /usr/bin/docker ] || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
[ ${#missing[@]} -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "tests: need ${missing[*]} (apt-get as root); the tests that use them will not run here" >&2; exit 0
fi
echo "installing ${missing[*]} for the tests ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || echo "tests: apt-get install ${missing[*]} failed" >&2
exit 0
