#!/usr/bin/env bash
# Build the server and engine images, the PostgreSQL image of docker-compose.yml's
# `postgres` profile (docker/postgres.Dockerfile) and the SeaweedFS image of its `storage`
# profile (docker/seaweedfs.Dockerfile), with the classic builder, first making
# sure the base image exists (docker/base-image.sh: pulled, or built from Debian packages).
# The build host's CA bundle goes into the build stage so pip works behind an
# intercepting proxy; it is not in the images. Used by tests/deploy/test_docker.py.
# Usage: docker/build.sh [SERVER_TAG [ENGINE_TAG [POSTGRES_TAG [SEAWEEDFS_TAG]]]]
#   (default distconv/dispatch-server, distconv/dispatch-engine, distconv/postgres and
#   distconv/seaweedfs)
set -euo pipefail
cd "$(dirname "$0")/.."

server=${1:-distconv/dispatch-server}
engine=${2:-distconv/dispatch-engine}
postgres=${3:-distconv/postgres}
seaweedfs=${4:-distconv/seaweedfs}

# The one base image of all four: the Dockerfile's, passed to the other two Dockerfiles.
base=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
bash docker/base-image.sh "$base"

ca=${BUILD_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
log=$(mktemp)
trap 'rm -f docker/build-ca.pem "$log"' EXIT
if [ -s "$ca" ]; then
    cp "$ca" docker/build-ca.pem
fi

# The classic builder needs no front-end image from a registry. --network host: the
# RUN steps reach PyPI and Debian even when the daemon runs without a default bridge.
# The engine stages come before the server's in the Dockerfile, so building the
# engine first leaves every layer the server build needs in the cache.
export DOCKER_BUILDKIT=0
for target in engine server; do
    tag=$engine
    [ "$target" = server ] && tag=$server
    if ! docker build --network host --target "$target" -t "$tag" . >"$log" 2>&1; then
        cat "$log" >&2
        echo "build.sh: building the $target image failed" >&2
        exit 1
    fi
done
for name in postgres seaweedfs; do
    tag=$postgres
    [ "$name" = seaweedfs ] && tag=$seaweedfs
    if ! docker build --network host --build-arg "BASE_IMAGE=$base" \
            -f "docker/$name.Dockerfile" -t "$tag" . >"$log" 2>&1; then
        cat "$log" >&2
        echo "build.sh: building the $name image failed" >&2
        exit 1
    fi
done
