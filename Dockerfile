# DistConv images: the dispatch server (the default, last stage) and an engine with
# ffmpeg (`--target engine`). Works with the classic builder (DOCKER_BUILDKIT=0) and
# with BuildKit. See README "Docker".
ARG BASE_IMAGE=python:3.11-slim

# ---- build: the package and its pinned dependencies in a venv ------------------------
FROM ${BASE_IMAGE} AS build
# The label lets the tests remove this stage's image, which the classic builder keeps.
LABEL distconv.stage=build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# docker/build-ca.pem is optional (the pattern matches nothing when it is absent): a CA
# bundle for pip when the build host sits behind an intercepting proxy. It lives in this
# stage only; the images below copy nothing but the venv.
COPY requirements.txt docker/build-ca.pe[m] /src/
# `python3` is /usr/local/bin/python3 in python:3.11-slim and /usr/bin/python3 in a
# Debian-built base; from here on everything goes through the venv.
RUN if [ -s build-ca.pem ]; then export PIP_CERT=/src/build-ca.pem; fi \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --quiet --no-compile -r requirements.txt
COPY setup.py setup.cfg README.md /src/
COPY dispatch /src/dispatch
RUN if [ -s build-ca.pem ]; then export PIP_CERT=/src/build-ca.pem; fi \
 && /opt/venv/bin/pip install --quiet --no-compile --no-deps /src \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib

# ---- runtime: the unprivileged user and the /app layout both images share ------------
FROM ${BASE_IMAGE} AS runtime
# A fixed uid/gid, so bind-mounted host folders can be chowned to it (README "Docker").
RUN groupadd --system --gid 10001 distconv \
 && useradd --system --uid 10001 --gid distconv --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin distconv \
 && mkdir -p /app/config /app/logs /app/data \
 && chown distconv:distconv /app/logs /app/data

# ---- engine: dispatch-engine with Debian's ffmpeg ------------------------------------
FROM runtime AS engine-os
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg \
        >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /app/work /app/output \
 && chown distconv:distconv /app/work /app/output

FROM engine-os AS engine
COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoint.sh docker/healthcheck.py /app/docker/
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    DISTCONV_WORK_DIR=/app/work DISTCONV_OUTPUT_DIR=/app/output
WORKDIR /app
USER distconv
VOLUME ["/app/config", "/app/work", "/app/output"]
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "/app/docker/healthcheck.py", "engine"]
ENTRYPOINT ["/app/docker/entrypoint.sh", "dispatch-engine"]

# ---- server (default target): dispatch-server on 0.0.0.0:8080 ------------------------
FROM runtime AS server
COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoint.sh docker/healthcheck.py scripts/backup-state.sh /app/docker/
# Defaults for the container; any DISTCONV_* variable given to `docker run -e` wins,
# and variables win over /app/config/server.conf (README "Configuration").
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    DISTCONV_HOST=0.0.0.0 DISTCONV_PORT=8080 \
    DISTCONV_STATE_FILE=/app/data/server_state.json
WORKDIR /app
USER distconv
VOLUME ["/app/config", "/app/logs", "/app/data"]
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "/app/docker/healthcheck.py", "server"]
ENTRYPOINT ["/app/docker/entrypoint.sh", "dispatch-server"]
