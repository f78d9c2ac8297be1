#!/usr/bin/env bash
# Install the real programs the tests drive, only when missing: one `need` line each
# in check_all (COMMAND looked up on PATH, or an absolute path; then the Debian package).
# Quiet and quick when everything is there. Never starts a service as a side effect.
set -euo pipefail

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
# For programs Debian keeps out of PATH (a glob over its versioned folders).
need_glob() { compgen -G "$1" >/dev/null || missing+=("$2"); }

check_all() {
    missing=()
    need /usr/sbin/nginx nginx            # tests/deploy/test_deploy.py runs its own nginx on loopback
    need systemd-analyze systemd          # to verify the unit files
    need dockerd docker.io                # tests/deploy/test_docker.py builds and runs the images
    need mmdebstrap mmdebstrap            # docker/base-image.sh: a base image without a registry
    need docker-compose docker-compose    # tests/deploy/test_docker.py checks docker-compose.yml
    need curl curl                        # tests/deploy/test_docker.py submits a job as a user would
    need ffmpeg ffmpeg                    # dispatch-engine and its tests (ffprobe too)
    need /usr/bin/chromium chromium       # tests/ui/test_ui_browser.py drives it with Playwright
    need_glob '/usr/lib/postgresql/*/bin/pg_ctl' postgresql  # tests/support/postgres.py: initdb, pg_ctl
}

check_all
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "test-deps.sh: missing ${missing[*]}; run as root to install them" >&2
    exit 1
fi

echo "test-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive

# Debian's maintainer scripts start a freshly installed service through invoke-rc.d;
# a policy-rc.d that answers 101 ("not allowed") keeps nginx from starting (and
# from taking port 80). Only a policy file we created is removed afterwards.
policy=/usr/sbin/policy-rc.d
created_policy=""
cleanup() { if [ -n "$created_policy" ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi

log=$(mktemp)
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
        >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"

check_all
if [ "${#missing[@]}" -ne 0 ]; then
    echo "test-deps.sh: still missing after install: ${missing[*]}" >&2
    exit 1
fi
