#!/usr/bin/env bash
# Install the dispatch server like the original (README "Manual Installation"):
#
#   PREFIX/bin/dispatch-server   wrapper that runs the server from PREFIX/venv
#   PREFIX/venv/                 virtualenv: pinned requirements + this package
#   PREFIX/config/               api_key (generated, mode 600), distconv-dispatch.env,
#                                server.conf, and their *.example templates
#   PREFIX/data/                 state file and journal (owned by the service user)
#   PREFIX/logs/                 log files (owned by the service user)
#   DESTDIR/etc/systemd/system/distconv-dispatch.service   paths rewritten to PREFIX
#
# Environment: PREFIX (default /opt/distconv/server), DESTDIR (default empty: the real
# system), PYTHON (default python3, 3.11 or newer), SERVICE_USER (default distconv).
# Only as root and without DESTDIR does it create the service user, chown the data,
# logs and key, and reload systemd. Running it again upgrades the code and keeps
# config, key and data. It never starts or restarts the service.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${PREFIX:-/opt/distconv/server}
DESTDIR=${DESTDIR:-}
PYTHON=${PYTHON:-python3}
SERVICE_USER=${SERVICE_USER:-distconv}
UNIT=distconv-dispatch.service

case "$PREFIX" in
    /*) PREFIX=${PREFIX%/} ;;
    *) echo "install.sh: PREFIX must be an absolute path, not '$PREFIX'" >&2; exit 2 ;;
esac
if [ -n "$DESTDIR" ]; then
    case "$DESTDIR" in
        /*) DESTDIR=${DESTDIR%/} ;;
        *) echo "install.sh: DESTDIR must be an absolute path, not '$DESTDIR'" >&2; exit 2 ;;
    esac
fi

root="$DESTDIR$PREFIX"
unit_dir="$DESTDIR/etc/systemd/system"
system_install=""
if [ -z "$DESTDIR" ] && [ "$(id -u)" -eq 0 ]; then
    system_install=1
fi

say() { echo "install.sh: $*"; }

# Copy $1 to $2 with paths rewritten to PREFIX; mode $3.
install_rewritten() {
    local tmp
    tmp=$(mktemp "$2.XXXXXX")
    sed "s#/opt/distconv/server#$PREFIX#g" "$1" >"$tmp"
    chmod "$3" "$tmp"
    mv -f "$tmp" "$2"
}

# ---------------------------------------------------------------- layout
mkdir -p "$root/bin" "$root/config" "$root/logs" "$root/data" "$unit_dir"
chmod 755 "$root" "$root/bin"
chmod 750 "$root/config" "$root/logs" "$root/data"

# ---------------------------------------------------------------- virtualenv
# The venv links to its base interpreter, which the service must be able to run: not
# one under a home folder (the unit has ProtectHome=true, and /root is private).
check_base_python() {  # $1: a python, $2: what to do about it
    local base
    base=$("$1" -c 'import os, sys
print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))')
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "install.sh: $base is older than Python 3.11; $2" >&2
        exit 2
    }
    case "$base" in
        /root/* | /home/* | /run/user/*)
            if [ -n "$system_install" ]; then
                echo "install.sh: $base is under a home folder, which the service cannot" \
                    "reach; $2" >&2
                exit 2
            fi
            echo "install.sh: warning: $base is under a home folder; the service will not" \
                "be able to run it once installed" >&2
            ;;
    esac
}
venv_python="$root/venv/bin/python"
if [ ! -x "$venv_python" ]; then
    check_base_python "$PYTHON" "set PYTHON to a system python3 (Debian: python3-venv)"
    say "creating virtualenv $root/venv"
    "$PYTHON" -m venv "$root/venv"
fi
check_base_python "$venv_python" "remove $root/venv and set PYTHON to a system python3"
"$venv_python" -m pip install --quiet --disable-pip-version-check -r "$SRC/requirements.txt"
# Build from a clean copy of the sources: an in-tree build would leave build/ in the
# checkout, and a stale build/lib can carry modules deleted since into the venv.
# --force-reinstall: an upgrade with an unchanged version number still gets the new code.
build_dir=$(mktemp -d)
trap 'rm -rf "$build_dir"' EXIT
for item in setup.py setup.cfg pyproject.toml MANIFEST.in README.md LICENSE dispatch; do
    if [ -e "$SRC/$item" ]; then
        cp -R "$SRC/$item" "$build_dir/"
    fi
done
find "$build_dir" -name __pycache__ -prune -exec rm -rf {} +
(cd "$build_dir" && "$venv_python" -m pip install --quiet --disable-pip-version-check \
    --use-pep517 --no-deps --force-reinstall .)

# The wrapper finds the venv next to itself, so a tree staged in DESTDIR works
# both where it was built and once moved to PREFIX (the venv's own scripts carry
# absolute paths; its python does not need them).
wrapper="$root/bin/dispatch-server"
tmp=$(mktemp "$wrapper.XXXXXX")
cat >"$tmp" <<'WRAPPER'
#!/bin/sh
# dispatch-server from the virtualenv next to this folder (installed by install.sh).
# -I: isolated, so neither the current folder nor PYTHON* variables change what runs.
here=$(dirname "$(readlink -f "$0")")
exec "$here/../venv/bin/python" -I -m dispatch.cli "$@"
WRAPPER
chmod 755 "$tmp"
mv -f "$tmp" "$wrapper"

# ---------------------------------------------------------------- config
install_rewritten "$SRC/systemd/distconv-dispatch.env.example" \
    "$root/config/distconv-dispatch.env.example" 644
install_rewritten "$SRC/deploy/server.conf.example" "$root/config/server.conf.example" 644
# The live files are the administrator's: created once, never overwritten.
for name in distconv-dispatch.env server.conf; do
    if [ ! -e "$root/config/$name" ]; then
        cp "$root/config/$name.example" "$root/config/$name"
        chmod 640 "$root/config/$name"
        say "created $root/config/$name"
    fi
done

key_file="$root/config/api_key"
if [ ! -s "$key_file" ]; then
    tmp=$(mktemp "$key_file.XXXXXX")  # mode 600 from mktemp
    "$venv_python" -c 'import secrets; print(secrets.token_hex(32))' >"$tmp"
    mv -f "$tmp" "$key_file"
    say "generated the API key in $key_file (give it to clients and engines)"
fi
chmod 600 "$key_file"

# ---------------------------------------------------------------- systemd unit
install_rewritten "$SRC/systemd/$UNIT" "$unit_dir/$UNIT" 644

# ---------------------------------------------------------------- user, owners
if [ -n "$system_install" ]; then
    if ! getent group "$SERVICE_USER" >/dev/null; then
        groupadd --system "$SERVICE_USER"
    fi
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        useradd --system --gid "$SERVICE_USER" --home-dir "$PREFIX" --no-create-home \
            --shell /usr/sbin/nologin --comment "DistConv dispatch server" "$SERVICE_USER"
        say "created service user $SERVICE_USER"
    fi
    # Code and config stay root's (the service cannot change them); the service
    # owns only what it writes, and its key.
    chown root:"$SERVICE_USER" "$root/config" "$root/config/distconv-dispatch.env" \
        "$root/config/server.conf"
    chown -R "$SERVICE_USER:$SERVICE_USER" "$root/data" "$root/logs"
    chown "$SERVICE_USER:$SERVICE_USER" "$key_file"
    if ! runuser -u "$SERVICE_USER" -- "$wrapper" --version >/dev/null; then
        echo "install.sh: the service user $SERVICE_USER cannot run $wrapper" \
            "(check the permissions of the folders above $PREFIX and of the Python)" >&2
        exit 1
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
    fi
fi

say "installed $("$wrapper" --version) in $root"
if [ -n "$system_install" ]; then
    cat <<NEXT
Next:
  edit $PREFIX/config/distconv-dispatch.env (and server.conf)
  systemctl enable --now distconv-dispatch
  nginx: copy $SRC/deploy/nginx/distconv-dispatch.conf to /etc/nginx/sites-available/
NEXT
fi
