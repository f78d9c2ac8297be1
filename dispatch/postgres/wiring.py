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

from dispatch.models import to_micros
from dispatch.postgres import migrate
from dispatch.postgres.backend import PostgresBackend
from dispatch.postgres.lease import Lease, start_grace
from dispatch.postgres.observe import DatabaseMetrics
from dispatch.postgres.pool import Pool, connect, conninfo, safe_url
from dispatch.service import Clock, DispatchService
from dispatch.settings import Settings

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


def open_service(settings: Settings, clock: Clock | None = None,
                 registry: CollectorRegistry | None = None) -> DispatchService:
    """A service whose state lives in the settings' database. Raises StateError or
    Unavailable when the database cannot be used."""
    assert settings.database_url is not None
    info = conninfo(settings.database_url, settings.database_password_file)
    upgrade_schema(settings)
    observer = DatabaseMetrics(registry) if registry is not None else None
    pool = Pool(info, settings.thread_pool_size + 2,
                observer.observe if observer is not None else None)
    if observer is not None:
        observer.watch(pool)
    backend = PostgresBackend(pool, lambda: to_micros((clock or time.time)()))
    service = DispatchService(settings, clock=clock, backend=backend)
    instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with connect(info) as conn:
        grace = start_grace(conn, instance, service.started_at,
                            2 * settings.leader_lease_seconds)
    # Engines silent since before the farm's first instance started get a full
    # heartbeat timeout from then, whichever instance sweeps.
    service.maintenance.grace_start = grace
    backend.instance = instance
    backend.lease = Lease(info, instance, settings.leader_lease_seconds, service.started_at,
                          on_lead=backend.compact)
    log.info("state in PostgreSQL at %s (instance %s)", safe_url(settings.database_url),
             instance)
    return service

