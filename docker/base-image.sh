#!/usr/bin/env bash
# Make sure the Dockerfile's base image is present: keep it when it is already there,
# pull it when a registry answers, otherwise build a stand-in from Debian's own packages
# (mmdebstrap, minbase bookworm: python3 3.11, venv, pip, CA certificates) and tag it with
# the FROM name, so machines without a registry can still build the images.
# Usage: docker/base-image.sh [IMAGE]   (default python:3.11-slim)
set -euo pipefail

image=${1:-python:3.11-slim}

if docker image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi
if timeout 60 docker pull -q "$image" >/dev/null 2>&1; then
    echo "base-image.sh: pulled $image" >&2
    exit 0
fi

echo "base-image.sh: cannot pull $image; building a stand-in with mmdebstrap" >&2
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# mmdebstrap writes the root file system as a tar stream; docker import makes an image
# of it. The --change lines give it what python:3.11-slim's configuration promises.
mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm - \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main" \
  | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "stand-in for $image built by docker/base-image.sh" \
    - "$image" >/dev/null
echo "base-image.sh: built $image from Debian bookworm" >&2
