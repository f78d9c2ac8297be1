#!/bin/sh
# Container entry point: `entrypoint.sh PROGRAM [ARGS...]`. Reads the program's config
# file from /app/config when it is there and no variable names another (the server's
# server.conf as in the original image, the engine's engine.conf); then replaces itself
# with PROGRAM (exec), so PROGRAM is PID 1 and gets docker stop's SIGTERM directly.
set -eu
program=$1
shift
if [ "$program" = dispatch-server ] && [ -z "${DISTCONV_CONFIG:-}" ] \
        && [ -f /app/config/server.conf ]; then
    export DISTCONV_CONFIG=/app/config/server.conf
fi
if [ "$program" = dispatch-engine ] && [ -z "${DISTCONV_ENGINE_CONFIG:-}" ] \
        && [ -f /app/config/engine.conf ]; then
    export DISTCONV_ENGINE_CONFIG=/app/config/engine.conf
fi
exec "$program" "$@"
