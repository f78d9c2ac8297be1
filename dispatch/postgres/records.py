"""The PostgreSQL repositories of engines, idempotency keys and webhook deliveries
(``ports``), each a view of one open unit (``backend.Unit``); jobs are in ``jobs``.

- idempotency: the key is the table's primary key; the first unit inserts it and
  holds it until it ends, a second one waits on it and then reads what it recorded;
- deliveries: an instance that sends them claims them for a while, so no two
  instances send the same one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from dispatch.models import Engine

if TYPE_CHECKING:
    from dispatch.postgres.backend import Unit

DELIVERY_CLAIM_SECONDS = 60.0  # an instance that took a delivery and died: retried after


class Repository:
    __slots__ = ("unit",)

    def __init__(self, unit: Unit) -> None:
        self.unit = unit


class Engines(Repository):
    __slots__ = ()

    def get(self, engine_id: str) -> Engine | None:
        row = self.unit.execute("SELECT record FROM engines WHERE engine_id = %s",
                                (engine_id,)).fetchone()
        return Engine.from_dict(row[0]) if row else None

    def get_for_update(self, engine_id: str) -> Engine | None:
        row = self.unit.execute("SELECT record FROM engines WHERE engine_id = %s FOR UPDATE",
                                (engine_id,)).fetchone()
        return Engine.from_dict(row[0]) if row else None

    def put(self, engine: Engine) -> None:
        self.unit.execute(
            "INSERT INTO engines (engine_id, record) VALUES (%s, %s) "
            "ON CONFLICT (engine_id) DO UPDATE SET record = EXCLUDED.record",
            (engine.engine_id, Jsonb(engine.to_record())))

    def delete(self, engine_id: str) -> None:
        self.unit.execute("DELETE FROM engines WHERE engine_id = %s", (engine_id,))

    def all(self) -> list[Engine]:
        rows = self.unit.execute("SELECT record FROM engines ORDER BY ord").fetchall()
        return [Engine.from_dict(row[0]) for row in rows]


class Idempotency(Repository):
    __slots__ = ()

    def claim(self, key: str, now: float, ttl: float) -> dict[str, Any] | None:
        while True:
            # The first unit to insert the key holds it; another one waits here
            # until that unit ends, then finds its row.
            inserted = self.unit.execute(
                "INSERT INTO idempotency (key, at) VALUES (%s, %s) "
                "ON CONFLICT (key) DO NOTHING RETURNING key", (key, now)).fetchone()
            if inserted:
                return None
            row = self.unit.execute(
                "SELECT hash, job_id, at FROM idempotency WHERE key = %s FOR UPDATE",
                (key,)).fetchone()
            if row is None:
                continue  # expired and deleted meanwhile: try to take it again
            if now - row[2] >= ttl:
                return None  # too old to count; locked now, ``record`` replaces it
            return {"hash": row[0], "job_id": row[1], "at": row[2]}

    def record(self, key: str, fingerprint: str, job_id: str, now: float) -> None:
        self.unit.execute(
            "INSERT INTO idempotency (key, hash, job_id, at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (key) DO UPDATE SET hash = EXCLUDED.hash, "
            "job_id = EXCLUDED.job_id, at = EXCLUDED.at", (key, fingerprint, job_id, now))

    def expired(self, cutoff: float, limit: int) -> list[str]:
        rows = self.unit.execute(
            "SELECT key FROM idempotency WHERE at <= %s ORDER BY at, key LIMIT %s",
            (cutoff, limit)).fetchall()
        return [row[0] for row in rows]

    def delete(self, key: str) -> None:
        self.unit.execute("DELETE FROM idempotency WHERE key = %s", (key,))


class Deliveries(Repository):
    __slots__ = ()

    def get(self, job_id: str) -> dict[str, Any] | None:
        row = self.unit.execute("SELECT record FROM deliveries WHERE job_id = %s",
                                (job_id,)).fetchone()
        return row[0] if row else None

    def get_for_update(self, job_id: str) -> dict[str, Any] | None:
        row = self.unit.execute("SELECT record FROM deliveries WHERE job_id = %s FOR UPDATE",
                                (job_id,)).fetchone()
        return row[0] if row else None

    def put(self, job_id: str, delivery: dict[str, Any]) -> None:
        # A new version of the delivery is nobody's to send yet.
        self.unit.execute(
            "INSERT INTO deliveries (job_id, state, next_at, record) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (job_id) DO UPDATE SET state = EXCLUDED.state, "
            "next_at = EXCLUDED.next_at, record = EXCLUDED.record, claimed_by = NULL, "
            "claimed_until = NULL",
            (job_id, delivery["state"], delivery.get("next_at") or 0.0, Jsonb(delivery)))

    def due(self, now: float) -> list[dict[str, Any]]:
        """The due deliveries. An instance that sends them (``Unit.instance`` set)
        claims them for a while: no other instance sends one until it is recorded or
        the claim runs out (the claimer died)."""
        instance = self.unit.instance
        if instance is None:
            rows = self.unit.execute(
                "SELECT record, next_at FROM deliveries WHERE state = 'pending' "
                "AND next_at <= %s ORDER BY next_at LIMIT 100", (now,)).fetchall()
        else:
            rows = self.unit.execute(
                "UPDATE deliveries SET claimed_by = %(me)s, claimed_until = %(until)s "
                "WHERE job_id IN (SELECT job_id FROM deliveries WHERE state = 'pending'"
                " AND next_at <= %(now)s AND (claimed_by IS NULL OR claimed_by = %(me)s"
                " OR claimed_until <= %(now)s)"
                " ORDER BY next_at LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING record, next_at",
                {"me": instance, "until": now + DELIVERY_CLAIM_SECONDS, "now": now}).fetchall()
        return [row[0] for row in sorted(rows, key=lambda row: row[1])]
