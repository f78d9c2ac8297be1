"""The service over PostgreSQL, as a serving process opens it: the schema brought up
to date, the pool, this instance registered (the restart grace) and its lease."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
import uuid

from prometheus_client import CollectorRegistry
from psycopg.conninfo import make_conninfo

from dispatch.config.settings import Settings
from dispatch.domain.models import to_micros
from dispatch.service.ports import Clock
from dispatch.storage.postgres import migrate
from dispatch.storage.postgres.backend import PostgresBackend, compact
from dispatch.storage.postgres.lease import Lease, start_grace
from dispatch.storage.postgres.observe import DatabaseMetrics
from dispatch.storage.postgres.pool import Pool, connect, conninfo, safe_url

log = logging.getLogger("dispatch.postgres")
DEFAULT_STATE_FILE = Settings.__dataclass_fields__["state_file"].default


def upgrade_url(url: str, password_file: str | None) -> list[str]:
    """Apply the missing migrations; raises StateError (a database newer than this
    server) or Unavailable (no database)."""
    with connect(conninfo(url, password_file), unbounded=True) as conn:
        return migrate.upgrade(conn)


def upgrade_schema(settings: Settings) -> list[str]:
    assert settings.database_url is not None
    return upgrade_url(settings.database_url, settings.database_password_file)


def open_tool_backend(url: str, password_file: str | None) -> PostgresBackend:
    """A unit of work for a tool (``copy-state``): the schema brought up to date and
    a small pool; no instance, no lease."""
    upgrade_url(url, password_file)
    # Without the timeouts that bound a request: reading a whole farm takes long.
    info = make_conninfo(conninfo(url, password_file, application="copy-state"),
                         options="-c statement_timeout=0 -c lock_timeout=0")
    return PostgresBackend(Pool(info, 2), lambda: to_micros(time.time()))


def check_database(settings: Settings) -> None:
    """Before serving from PostgreSQL: the schema brought up to date (StateError or
    Unavailable when the database cannot be used). A state file also set is ignored,
    and said so."""
    if settings.state_file != DEFAULT_STATE_FILE:
        log.warning("state_file %s is ignored: the state lives in the database",
                    settings.state_file)
    upgrade_schema(settings)


def shared_session_secret(settings: Settings) -> str:
    """The dashboard's session-signing secret, generated once into the database by the
    first instance that asks (of several racing, one insert wins) and read by all, so
    a sign-in holds on every instance. Raises Unavailable when there is no database."""
    assert settings.database_url is not None
    with connect(conninfo(settings.database_url, settings.database_password_file)) as conn:
        conn.execute("INSERT INTO farm_secrets (name, value) VALUES ('ui_session', %s) "
                     "ON CONFLICT (name) DO NOTHING", (secrets.token_hex(32),))
        row = conn.execute(
            "SELECT value FROM farm_secrets WHERE name = 'ui_session'").fetchone()
    assert row is not None
    return str(row[0])


def open_backend(settings: Settings, clock: Clock,
                 registry: CollectorRegistry | None = None) -> PostgresBackend:
    """The unit of work of one serving process on the settings' database: its pool,
    this instance registered (the farm's restart grace), its background-work lease and
    the farm's dashboard secret. Raises StateError or Unavailable when the database
    cannot be used."""
    assert settings.database_url is not None
    info = conninfo(settings.database_url, settings.database_password_file)
    upgrade_schema(settings)
    observer = DatabaseMetrics(registry) if registry is not None else None
    pool = Pool(info, settings.thread_pool_size + 2,
                observer.observe if observer is not None else None)
    if observer is not None:
        observer.watch(pool)
    started_at = to_micros(clock())
    instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with connect(info) as conn:
        # Engines silent since before the farm's first instance started get a full
        # heartbeat timeout from then, whichever instance sweeps.
        grace = start_grace(conn, instance, started_at, 2 * settings.leader_lease_seconds)
    lease = Lease(info, instance, settings.leader_lease_seconds, started_at,
                  on_lead=lambda: compact(pool))
    secret = settings.ui_secret or shared_session_secret(settings)
    log.info("state in PostgreSQL at %s (instance %s)", safe_url(settings.database_url),
             instance)
    return PostgresBackend(pool, lambda: to_micros(clock()), instance=instance,
                           lease=lease, grace_start=grace, session_secret=secret)
