"""The schema: versioned SQL files in ``migrations/`` (``NNNN_name.sql``), shipped in
the package and applied in order, each in its own transaction with its version row.

Every instance applies what is missing at start, under an advisory lock so that
instances starting together apply each file once; ``dispatch-server db upgrade`` does
the same by hand. A database whose schema is newer than this server knows is refused:
the server would misread rows written by a newer one.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from dispatch.domain import errors

log = logging.getLogger("dispatch.postgres")

LOCK_SPACE = 0x44435631  # "DCV1": this server's advisory locks
MIGRATION_LOCK = 3
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def known() -> list[Migration]:
    """The migrations this server ships, oldest first."""
    folder = resources.files("dispatch.storage.postgres") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return sorted(found, key=lambda m: m.version)


def current_version(conn: psycopg.Connection[Any]) -> int:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def upgrade(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply the missing migrations (``conn`` in autocommit mode); return their names.
    Raises ``errors.StateError`` for a database newer than this server."""
    migrations = known()
    newest = migrations[-1].version if migrations else 0
    conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_SPACE, MIGRATION_LOCK))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
        version = current_version(conn)
        if version > newest:
            raise errors.StateError(
                f"the database schema is at version {version}, newer than this server "
                f"knows ({newest}): run the newer server, or restore a backup taken "
                "before the upgrade"
            )
        applied = []
        for migration in migrations:
            if migration.version <= version:
                continue
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                             (migration.version, migration.name))
            log.info("database schema: applied %s", migration.name)
            applied.append(migration.name)
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_SPACE, MIGRATION_LOCK))
