#!/usr/bin/env bash
# Make a local stand-in for the public base image where no registry can be reached: a minimal
# Debian bookworm with Python 3.11 (the same Python as python:3.11-slim-bookworm), imported
# under that tag so docker/Dockerfile builds unchanged. Skipped if the tag already exists.
#   docker/make_base_image.sh [TAG]      (DOCKER_HOST selects the daemon)
set -euo pipefail
tag=${1:-python:3.11-slim-bookworm}
client=${DOCKER:-/usr/bin/docker}
if "$client" image inspect "$tag" >/dev/null 2>&1; then echo "base image $tag: cached"; exit 0; fi
command -v debootstrap >/dev/null || { echo "debootstrap not found (apt-get install debootstrap)" >&2; exit 1; }
# The Debian mirror apt already uses on this machine.
mirror=$(grep -rhoE '^(deb|URIs:)\s+\S*https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null \
         | grep -oE 'https?://[^ ]+' | head -n1 || true)
mirror=${mirror:-http://deb.debian.org/debian}
rootfs=$(mktemp -d /var/tmp/base-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $mirror ..."
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >/dev/null
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
tar -C "$rootfs" -c . | "$client" import --change 'CMD ["python3"]' - "$tag" >/dev/null
echo "base image $tag: made from debootstrap"
