# PostgreSQL for docker-compose.yml's `postgres` profile, from Debian's own packages on
# the same base image as the DistConv images (python:3.11-slim, or the stand-in that
# docker/base-image.sh builds), so it builds where no registry answers. Runs as the
# postgres user; the first start creates the cluster (docker/postgres-entrypoint.sh).
# Build: docker build -f docker/postgres.Dockerfile -t distconv/postgres .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# The postgres user gets the uid and gid of the images' distconv user (10001): Compose
# file secrets are bind mounts that keep the host file's owner, so one
# `chown 10001 secrets/db_password` lets both the server and PostgreSQL read it.
# createcluster.conf: no cluster at install time; the entry script makes one in the
# volume on first start.
RUN groupadd --system --gid 10001 postgres \
 && useradd --system --uid 10001 --gid postgres --home-dir /var/lib/postgresql \
        --no-create-home --shell /bin/sh postgres \
 && mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql-15 >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /run/postgresql \
 && chown postgres:postgres /var/lib/postgresql /var/lib/postgresql/data /run/postgresql \
 && chmod 700 /var/lib/postgresql/data
COPY docker/postgres-entrypoint.sh /usr/local/bin/
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data \
    POSTGRES_USER=distconv POSTGRES_DB=distconv \
    POSTGRES_PASSWORD_FILE=/run/secrets/distconv_db_password
USER postgres
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
# SIGINT is PostgreSQL's fast shutdown; SIGTERM (smart) would wait for the server's
# pooled connections to close, past docker stop's 10 s.
STOPSIGNAL SIGINT
HEALTHCHECK --interval=2s --timeout=5s --start-period=30s --retries=5 \
    CMD ["pg_isready", "--quiet", "--host=127.0.0.1"]
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
