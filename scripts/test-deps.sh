#!/usr/bin/env bash
# Install what the deployment tests (tests/test_deploy.py) need, only when missing:
#   nginx            /usr/sbin/nginx  (the tests run their own nginx on loopback)
#   systemd          systemd-analyze  (to verify the unit file)
# Quiet and quick when everything is there. Never starts nginx as a service.
set -euo pipefail

missing=()
[ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)

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

[ -x /usr/sbin/nginx ] || { echo "test-deps.sh: /usr/sbin/nginx still missing" >&2; exit 1; }
command -v systemd-analyze >/dev/null 2>&1 || {
    echo "test-deps.sh: systemd-analyze still missing" >&2; exit 1; }
