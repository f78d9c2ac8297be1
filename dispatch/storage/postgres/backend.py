"""The PostgreSQL unit of work (``ports.UnitOfWork``): each unit is one database
transaction on one pooled connection, committed on leaving the block; a 2xx answer
is sent only after the commit returned. A unit that raises is rolled back, and a
failed commit (the database went away) raises ``errors.Unavailable`` with nothing
changed, or, when the connection broke during the commit itself, an outcome the
client learns by reading again (the same as a lost answer over HTTP).

Units run at READ COMMITTED; the rules that read and then write take row locks
(``FOR UPDATE``), skip rows other units hold (``SKIP LOCKED``) or serialise on an
advisory lock where they count (queue room, the concurrency limit): see ``jobs``
and ``records``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from dispatch.domain.models import Job
from dispatch.service.ports import Transaction
from dispatch.storage.postgres.job_rows import SELECT_JOB, job_from_row
from dispatch.storage.postgres.jobs import Jobs
from dispatch.storage.postgres.lease import Lease
from dispatch.storage.postgres.pool import DATABASE_DOWN, Pool, reason
from dispatch.storage.postgres.records import Deliveries, Engines, Idempotency

log = logging.getLogger("dispatch.postgres")

# Job counts are kept as deltas; folding them keeps a count a sum over a few rows.
COMPACT_COUNTS = (
    "WITH d AS (DELETE FROM job_counts RETURNING *) "
    "INSERT INTO job_counts (status, n, time_sum, time_n, codec_family, priority, kind) "
    "SELECT status, sum(n), sum(time_sum), sum(time_n), codec_family, priority, kind "
    "FROM d GROUP BY status, codec_family, priority, kind"
)


def compact(pool: Pool) -> None:
    """Fold the job count deltas (by the lease holder, on each renewal)."""
    with pool.connection("maintenance") as conn:
        conn.execute(COMPACT_COUNTS)


class Unit:
    """One open unit: the transaction's connection and the rows it has locked (so
    ``put`` knows what a job was, for the history, without reading it again)."""

    def __init__(self, conn: psycopg.Connection[Any], instance: str | None,
                 connections: int) -> None:
        self.conn = conn
        self.instance = instance
        self.connections = connections  # the most units that can be in flight at once
        self.after: list[str] = []  # statements to run once the unit has ended
        self.locked: dict[str, tuple[Job | None, bytes | None]] = {}
        self.jobs = Jobs(self)
        self.engines = Engines(self)
        self.idempotency = Idempotency(self)
        self.deliveries = Deliveries(self)

    def execute(self, query: str, params: Any = None) -> psycopg.Cursor[Any]:
        return self.conn.execute(query, params)  # type: ignore[arg-type]

    def rows(self, query: str, params: Any = None) -> psycopg.Cursor[dict[str, Any]]:
        """``execute``, with each row a dict by column name: how records are mapped
        to jobs and engines."""
        cursor = self.conn.cursor(row_factory=dict_row)
        return cursor.execute(query, params)  # type: ignore[arg-type]


class PostgresBackend:
    """The unit of work over a connection pool."""

    def __init__(self, pool: Pool, now: Callable[[], float], *, instance: str | None = None,
                 lease: Lease | None = None, grace_start: float | None = None,
                 session_secret: str | None = None) -> None:
        """Units over ``pool``. A serving instance (``wiring.open_backend``) names
        itself (then it claims the webhook deliveries it sends), holds a ``lease`` for
        the background work, and has the farm's ``grace_start`` and dashboard secret;
        a tool or a test needs none of them."""
        self.pool = pool
        self.now = now
        self.instance = instance
        self.lease = lease
        self._grace_start = now() if grace_start is None else grace_start
        self._session_secret = session_secret
        self._connections: int | None = None

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        with self.pool.connection("transaction") as conn:
            unit = Unit(conn, self.instance, self.max_connections(conn))
            try:
                with conn.transaction():
                    yield unit
                    self.before_commit(conn)
            finally:
                self._after(conn, unit.after)

    @staticmethod
    def _after(conn: psycopg.Connection[Any], statements: list[str]) -> None:
        """Release the session locks a unit held until its end. A connection that
        broke meanwhile has released them with its session; the unit's outcome
        stands either way (a committed unit is never reported as failed here)."""
        for statement in statements:
            try:
                conn.execute(statement)
            except DATABASE_DOWN as exc:
                log.warning("lock release failed (the session ends with it): %s",
                            reason(exc))
                conn.close()
                return

    def before_commit(self, conn: psycopg.Connection[Any]) -> None:
        """Called as a unit is about to commit (a test makes it fail here)."""

    @contextmanager
    def read(self) -> Iterator[Transaction]:
        # A transaction too: reading deliveries claims them (``Deliveries.due``).
        with self.pool.connection("read") as conn:
            with conn.transaction():
                yield Unit(conn, self.instance, self._connections or 0)

    def max_connections(self, conn: psycopg.Connection[Any]) -> int:
        """The database's connection limit, read once."""
        if self._connections is None:
            row = conn.execute("SELECT current_setting('max_connections')::int").fetchone()
            self._connections = int(row[0]) if row else 100
        return self._connections

    def peek_job(self, job_id: str) -> Job | None:
        with self.pool.connection("peek") as conn:
            row = conn.cursor(row_factory=dict_row).execute(
                SELECT_JOB + " WHERE job_id = %s", (job_id,)).fetchone()
        return job_from_row(row) if row else None

    def snapshot(self) -> bool:
        """Nothing to compact but the count deltas: every change is in the database."""
        compact(self.pool)
        return False

    @property
    def grace_start(self) -> float:
        return self._grace_start

    def leads(self) -> bool:
        return self.lease is None or self.lease.leads()

    def start(self) -> None:
        if self.lease is not None:
            self.lease.start()

    def session_secret(self) -> str | None:
        return self._session_secret

    @property
    def failure(self) -> str | None:
        return self.pool.failure

    def check(self) -> str | None:
        return self.pool.ping()

    def close(self) -> None:
        if self.lease is not None:
            self.lease.stop()
        self.pool.close()

