"""The PostgreSQL repositories of engines, idempotency keys and webhook deliveries
(``ports``), each a view of one open unit (``backend.Unit``); jobs are in ``jobs``.

- idempotency: the key is the table's primary key; the first unit inserts it and
  holds it until it ends, a second one waits on it and then reads what it recorded;
- deliveries: an instance that sends them claims them for a while, so no two
  instances send the same one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg.types.json import Jsonb

from dispatch.domain.models import Delivery, Engine, IdempotencyEntry

if TYPE_CHECKING:
    from dispatch.storage.postgres.backend import Unit

DELIVERY_CLAIM_SECONDS = 60.0  # an instance that took a delivery and died: retried after


class Repository:
    __slots__ = ("unit",)

    def __init__(self, unit: Unit) -> None:
        self.unit = unit


class Engines(Repository):
    __slots__ = ()

    def get(self, engine_id: str) -> Engine | None:
        row = self.unit.rows("SELECT record FROM engines WHERE engine_id = %s",
                             (engine_id,)).fetchone()
        return Engine.from_dict(row["record"]) if row else None

    def get_for_update(self, engine_id: str) -> Engine | None:
        row = self.unit.rows("SELECT record FROM engines WHERE engine_id = %s FOR UPDATE",
                             (engine_id,)).fetchone()
        return Engine.from_dict(row["record"]) if row else None

    def put(self, engine: Engine) -> None:
        self.unit.execute(
            "INSERT INTO engines (engine_id, record) VALUES (%s, %s) "
            "ON CONFLICT (engine_id) DO UPDATE SET record = EXCLUDED.record",
            (engine.engine_id, Jsonb(engine.to_record())))

    def delete(self, engine_id: str) -> None:
        self.unit.execute("DELETE FROM engines WHERE engine_id = %s", (engine_id,))

    def all(self) -> list[Engine]:
        rows = self.unit.rows("SELECT record FROM engines ORDER BY ord").fetchall()
        return [Engine.from_dict(row["record"]) for row in rows]


class Idempotency(Repository):
    __slots__ = ()

    def claim(self, key: str, now: float, ttl: float) -> IdempotencyEntry | None:
        while True:
            # The first unit to insert the key holds it; another one waits here
            # until that unit ends, then finds its row.
            inserted = self.unit.execute(
                "INSERT INTO idempotency (key, at) VALUES (%s, %s) "
                "ON CONFLICT (key) DO NOTHING RETURNING key", (key, now)).fetchone()
            if inserted:
                return None
            row = self.unit.rows(
                "SELECT hash, job_id, at FROM idempotency WHERE key = %s FOR UPDATE",
                (key,)).fetchone()
            if row is None:
                continue  # expired and deleted meanwhile: try to take it again
            if now - row["at"] >= ttl:
                return None  # too old to count; locked now, ``record`` replaces it
            return IdempotencyEntry.from_record(row)

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

    def all(self) -> list[tuple[str, IdempotencyEntry]]:
        rows = self.unit.rows("SELECT key, hash, job_id, at FROM idempotency "
                              "WHERE hash IS NOT NULL ORDER BY at, key").fetchall()
        return [(row["key"], IdempotencyEntry.from_record(row)) for row in rows]


class Deliveries(Repository):
    __slots__ = ()

    def get(self, job_id: str) -> Delivery | None:
        row = self.unit.rows("SELECT record FROM deliveries WHERE job_id = %s",
                             (job_id,)).fetchone()
        return Delivery.from_record(row["record"]) if row else None

    def get_for_update(self, job_id: str) -> Delivery | None:
        row = self.unit.rows("SELECT record FROM deliveries WHERE job_id = %s FOR UPDATE",
                             (job_id,)).fetchone()
        return Delivery.from_record(row["record"]) if row else None

    def put(self, delivery: Delivery) -> None:
        # A new version of the delivery is nobody's to send yet.
        self.unit.execute(
            "INSERT INTO deliveries (job_id, state, next_at, record) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (job_id) DO UPDATE SET state = EXCLUDED.state, "
            "next_at = EXCLUDED.next_at, record = EXCLUDED.record, claimed_by = NULL, "
            "claimed_until = NULL",
            (delivery.job_id, delivery.state, delivery.next_at, Jsonb(delivery.to_record())))

    def due(self, now: float) -> list[Delivery]:
        """The due deliveries. An instance that sends them (``Unit.instance`` set)
        claims them for a while: no other instance sends one until it is recorded or
        the claim runs out (the claimer died)."""
        instance = self.unit.instance
        if instance is None:
            rows = self.unit.rows(
                "SELECT record, next_at FROM deliveries WHERE state = 'pending' "
                "AND next_at <= %s ORDER BY next_at LIMIT 100", (now,)).fetchall()
        else:
            rows = self.unit.rows(
                "UPDATE deliveries SET claimed_by = %(me)s, claimed_until = %(until)s "
                "WHERE job_id IN (SELECT job_id FROM deliveries WHERE state = 'pending'"
                " AND next_at <= %(now)s AND (claimed_by IS NULL OR claimed_by = %(me)s"
                " OR claimed_until <= %(now)s)"
                " ORDER BY next_at LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING record, next_at",
                {"me": instance, "until": now + DELIVERY_CLAIM_SECONDS, "now": now}).fetchall()
        return [Delivery.from_record(row["record"])
                for row in sorted(rows, key=lambda row: row["next_at"])]

    def all(self) -> list[Delivery]:
        rows = self.unit.rows("SELECT record FROM deliveries ORDER BY job_id").fetchall()
        return [Delivery.from_record(row["record"]) for row in rows]
