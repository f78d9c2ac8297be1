"""Connections to the database: a pool with timeouts that bound every request, and the
one place where a database failure becomes ``errors.Unavailable`` (a 503).

Bounds: a request waits at most ``POOL_TIMEOUT`` for a connection, a new connection
at most ``CONNECT_TIMEOUT`` to open, a statement at most ``STATEMENT_TIMEOUT`` to run,
so a request answers within 10 s whatever the database does (short of a hung
socket, which TCP keepalives end).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import ConnectionPool, PoolTimeout

from dispatch.domain import errors
from dispatch.runtime.logs import add_secrets

log = logging.getLogger("dispatch.postgres")

POOL_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3
STATEMENT_TIMEOUT_MS = 4000
LOCK_TIMEOUT_MS = 4000
RECONNECT_TIMEOUT = 2.0
# While the database is known to be down, a request waits this long for a connection
# before its 503 (the database coming back clears the failure).
FAILING_TIMEOUT = 1.0
# The failures that mean "the database cannot be reached or refused the unit":
# connection loss, timeouts, deadlocks (psycopg's OperationalError covers those),
# a connection found broken, and no connection free in time.
DATABASE_DOWN = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)

set_json_dumps(lambda obj: orjson.dumps(obj).decode())
set_json_loads(orjson.loads)


def read_password(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            password = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.StateError(
            f"cannot read the database password file {path}: {exc.__class__.__name__}"
        ) from None
    if not password:
        raise errors.StateError(f"the database password file {path} is empty")
    return password


def conninfo(url: str, password_file: str | None = None, *, application: str =
             "dispatch-server") -> str:
    """The connection string for ``url``, with the password from ``password_file``
    (else from the URL or libpq's ``PGPASSFILE``) and the timeouts. The password is
    registered with the log redactor, so no log line can carry it."""
    extra: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": application,
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
                   f"-c lock_timeout={LOCK_TIMEOUT_MS}",
        "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
        "keepalives_count": 2,
    }
    if password_file:
        extra["password"] = read_password(password_file)
    info = make_conninfo(url, **extra)
    add_secrets([str(conninfo_to_dict(info).get("password") or "")])
    return info


def safe_url(url: str) -> str:
    """``url`` as a log line may show it: host, port and database, no password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(unparseable database URL)"
    return f"postgresql://{parts.get('user', '')}@{parts.get('host', '')}:" \
           f"{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def connect(info: str, *, unbounded: bool = False) -> psycopg.Connection[Any]:
    """One connection outside the pool (migrations, the lease, copy-state);
    ``unbounded``: without the statement and lock timeouts that bound a request
    (a migration or a copy may take long, or wait for another instance's)."""
    try:
        conn = psycopg.connect(info, autocommit=True)
        if unbounded:
            conn.execute("SET statement_timeout = 0")
            conn.execute("SET lock_timeout = 0")
        return conn
    except DATABASE_DOWN as exc:
        raise errors.Unavailable(f"the database cannot be reached: {reason(exc)}") from None


def reason(exc: BaseException) -> str:
    """A failure's text for a log line or a 503 body: its first line, nothing that
    could hold a connection string."""
    if isinstance(exc, PoolTimeout):
        return "no database connection free in time"
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"


class Pool:
    """The connection pool, and what it tells the metrics."""

    def __init__(self, info: str, size: int,
                 observe: Callable[[str, float], None] | None = None) -> None:
        self.pool = ConnectionPool(
            info, min_size=min(2, size), max_size=size, timeout=POOL_TIMEOUT,
            kwargs={"autocommit": True}, open=False, name="dispatch",
            # Give up on a failing connection attempt soon: the next request that
            # finds no connection starts a fresh one, so the pool is back within
            # about a second of the database (instead of an ever longer backoff).
            reconnect_timeout=RECONNECT_TIMEOUT,
        )
        self.pool.open(wait=False)
        self.observe = observe or (lambda kind, seconds: None)
        self.failure: str | None = None
        self._checking = threading.Lock()

    @contextmanager
    def connection(self, kind: str) -> Iterator[psycopg.Connection[Any]]:
        """A connection for one unit of ``kind`` (its latency is observed); any
        database failure inside becomes ``errors.Unavailable``."""
        started = time.perf_counter()
        try:
            wait = POOL_TIMEOUT if self.failure is None else FAILING_TIMEOUT
            with self.pool.connection(timeout=wait) as conn:
                yield conn
        except DATABASE_DOWN as exc:
            self.failed(exc)
            what = "the change could not be saved" if kind == "transaction" else "no answer"
            raise errors.Unavailable(
                f"the database is unavailable, {what}: {reason(exc)}") from None
        self.failure = None
        self.observe(kind, time.perf_counter() - started)

    def failed(self, exc: BaseException) -> None:
        """Note a failure; have the pool drop its broken connections (in the
        background), so that requests after the database is back find good ones."""
        if self.failure is None:
            log.error("database unavailable: %s", reason(exc))
        self.failure = f"database unavailable: {reason(exc)}"
        if isinstance(exc, PoolTimeout) or not self._checking.acquire(blocking=False):
            return

        def check() -> None:
            try:
                self.pool.check()
            except Exception:  # the next failure tries again
                log.debug("pool check failed", exc_info=True)
            finally:
                self._checking.release()

        threading.Thread(target=check, name="pool-check", daemon=True).start()

    def ping(self) -> str | None:
        """Whether the database answers now: None, or why not."""
        try:
            with self.connection("ping") as conn:
                conn.execute("SELECT 1")
        except errors.Unavailable as exc:
            return exc.message
        return None

    def stats(self) -> dict[str, int]:
        return self.pool.get_stats()

    def close(self) -> None:
        self.pool.close(timeout=5)
