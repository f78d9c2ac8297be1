"""Which instance runs the background work (liveness sweeps, stall checks, retention,
webhook delivery), and the restart grace that all instances share.

The lease is a row (``leases``) with a holder and an expiry on the database's clock.
Every instance tries to take or renew it every third of ``leader_lease_seconds``; a
holder renews it for ``leader_lease_seconds``; anyone takes it once it has expired.
So when the holder dies, another instance leads within one lease period (two at the
very most, with a slow round). A holder that cannot reach the database stops leading
when its own copy of the expiry passes, before anyone else can take over.

Every instance also notes itself in ``instances`` on each round. The grace an engine
gets after the server was down (a full heartbeat timeout) starts when the first
instance starts after all of them were down: ``grace_start`` in ``meta``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from dispatch.domain import errors
from dispatch.storage.postgres.migrate import LOCK_SPACE
from dispatch.storage.postgres.pool import DATABASE_DOWN, connect, reason

log = logging.getLogger("dispatch.postgres")

GRACE_LOCK = 4
LEASE = "background"

_TAKE = """
INSERT INTO leases (name, holder, expires_at)
VALUES (%(name)s, %(me)s, clock_timestamp() + %(ttl)s * interval '1 second')
ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
WHERE leases.holder = EXCLUDED.holder OR leases.expires_at < clock_timestamp()
RETURNING holder
"""
_SEEN = """
INSERT INTO instances (instance_id, started_at, seen_at) VALUES (%s, %s, clock_timestamp())
ON CONFLICT (instance_id) DO UPDATE SET seen_at = EXCLUDED.seen_at
"""


def start_grace(conn: psycopg.Connection[Any], instance: str, now: float,
                window: float) -> float:
    """Register ``instance`` and return the farm's grace start: ``now`` when no other
    instance was seen within ``window`` seconds (all were down), else the one stored."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_SPACE, GRACE_LOCK))
        row = conn.execute(
            "SELECT count(*) FROM instances WHERE seen_at > clock_timestamp() "
            "- %s * interval '1 second'", (window,)).fetchone()
        if not row or row[0] == 0:
            conn.execute("INSERT INTO meta (key, value) VALUES ('grace_start', %s) "
                         "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (now,))
        else:
            conn.execute("INSERT INTO meta (key, value) VALUES ('grace_start', %s) "
                         "ON CONFLICT (key) DO NOTHING", (now,))
        conn.execute(_SEEN, (instance, now))
        conn.execute("DELETE FROM instances WHERE seen_at < clock_timestamp() - interval '1 day'")
        stored = conn.execute("SELECT value FROM meta WHERE key = 'grace_start'").fetchone()
    return float(stored[0]) if stored else now


class Lease(threading.Thread):
    """The background-work lease of one instance; ``leads()`` tells whether this
    instance runs the background work now."""

    def __init__(self, info: str, instance: str, seconds: float, started_at: float,
                 on_lead: Callable[[], object] | None = None) -> None:
        super().__init__(name="lease", daemon=True)
        self.info = info
        self.instance = instance
        self.seconds = seconds
        self.started_at = started_at
        self.on_lead = on_lead
        self.stopped = threading.Event()
        self._valid_until = 0.0  # monotonic: this instance leads until then
        self._conn: psycopg.Connection[Any] | None = None
        self._released = False

    def leads(self) -> bool:
        return time.monotonic() < self._valid_until

    def run(self) -> None:
        while not self.stopped.is_set():
            self.round()
            self.stopped.wait(self.seconds / 3)
        self._release()

    def round(self) -> None:
        """Take or renew the lease, note this instance as alive; while leading, fold
        the count deltas (``on_lead``)."""
        asked = time.monotonic()
        try:
            conn = self._connection()
            conn.execute(_SEEN, (self.instance, self.started_at))
            held = conn.execute(_TAKE, {"name": LEASE, "me": self.instance,
                                        "ttl": self.seconds}).fetchone() is not None
        except (errors.Unavailable, *DATABASE_DOWN) as exc:
            self._drop(f"cannot renew the background lease: {exc}")
            return
        was = self.leads()
        # Counted from before the question: the database's expiry is later still.
        self._valid_until = asked + self.seconds if held else 0.0
        if held and not was:
            log.warning("this instance (%s) now runs the background work", self.instance)
        elif was and not held:
            log.warning("another instance took over the background work")
        if held and self.on_lead is not None:
            try:
                self.on_lead()
            except errors.Unavailable as exc:  # said once by the pool already
                log.debug("background upkeep skipped: %s", exc)
            except Exception:
                log.exception("background upkeep failed")

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self.info)
        return self._conn

    def _drop(self, why: str) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        log.warning("%s", why)

    def _release(self) -> None:
        """On an orderly stop: hand the lease over now, not when it expires."""
        self._released = True
        try:
            conn = self._connection()
            conn.execute("DELETE FROM leases WHERE name = %s AND holder = %s",
                         (LEASE, self.instance))
            conn.execute("DELETE FROM instances WHERE instance_id = %s", (self.instance,))
            conn.close()
        except (errors.Unavailable, *DATABASE_DOWN) as exc:
            log.warning("lease not released (it expires on its own): %s", reason(exc))
        self._valid_until = 0.0

    def stop(self) -> None:
        """An orderly stop: the lease handed over and this instance no longer counted
        as alive (by the thread as it ends, or here when it never ran)."""
        self.stopped.set()
        if self.is_alive():
            if threading.current_thread() is not self:
                self.join(timeout=10)
        elif not self._released:
            self._release()
