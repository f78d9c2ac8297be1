"""``copy-state``: a farm moved between a state file and a database, either way, every
kind of record with it (jobs in creation order, engines, job histories, idempotency
keys, webhook deliveries). The target must be empty: nothing is merged or overwritten.
Both sides are read and written with the servers stopped (the state file is locked
while it is read or written; the database should have no instance running)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from dispatch import errors, history
from dispatch.history import Event
from dispatch.memory_backend import MemoryBackend
from dispatch.models import Engine, Job, to_micros
from dispatch.postgres import migrate
from dispatch.postgres.job_rows import JOB_COLUMNS, job_columns
from dispatch.postgres.pool import connect, conninfo
from dispatch.storage.journal import JournalStore

_STATE_TABLES = ("jobs", "engines", "idempotency", "deliveries")


@dataclass
class Farm:
    jobs: list[Job] = field(default_factory=list)  # in creation order
    engines: list[Engine] = field(default_factory=list)
    history: dict[str, list[Event]] = field(default_factory=dict)
    idempotency: dict[str, dict[str, Any]] = field(default_factory=dict)  # oldest first
    deliveries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{len(self.jobs)} jobs, {len(self.engines)} engines, "
                f"{len(self.history)} job histories, {len(self.idempotency)} idempotency "
                f"keys, {len(self.deliveries)} webhook deliveries")


def is_database(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def _now() -> float:
    return to_micros(time.time())


# --------------------------------------------------------------- state file


def _has_state(path: str) -> bool:
    """Whether a state file or its journal is there."""
    return os.path.exists(path) or os.path.exists(path + ".wal")


def read_file(path: str) -> Farm:
    if not _has_state(path):
        raise errors.StateError(f"state file {path} does not exist")
    backend = MemoryBackend(JournalStore(path), _now)
    try:
        state = backend.state
        return Farm(
            jobs=list(state.ordered), engines=list(state.engines.values()),
            history={job_id: history.decode(events)
                     for job_id, events in state.history.items()},
            idempotency=dict(state.idempotency), deliveries=dict(state.deliveries))
    finally:
        backend.close()


def write_file(path: str, farm: Farm) -> None:
    if _has_state(path):
        raise errors.StateError(f"refusing to write {path}: it exists (the target must be "
                                "empty; move it away first)")
    backend = MemoryBackend(JournalStore(path), _now)
    try:
        with backend.transaction():
            for job in farm.jobs:
                backend.put("job", job.job_id, job, job.to_record())
            for engine in farm.engines:
                backend.put("engine", engine.engine_id, engine, engine.to_record())
            for job_id, events in farm.history.items():
                backend.put("events", job_id, events, events)
            for key, entry in farm.idempotency.items():
                backend.put("idempotency", key, entry, entry)
            for job_id, delivery in farm.deliveries.items():
                backend.put("delivery", job_id, delivery, delivery)
        backend.snapshot()
    finally:
        backend.close()


# ----------------------------------------------------------------- database


def read_database(conn: psycopg.Connection[Any]) -> Farm:
    farm = Farm()
    for record, seq, events in conn.execute(
            "SELECT record, seq, events FROM jobs ORDER BY seq"):
        job = Job.from_dict(record, seq)
        farm.jobs.append(job)
        if events:
            farm.history[job.job_id] = history.decode(events)
    farm.engines = [Engine.from_dict(row[0]) for row in
                    conn.execute("SELECT record FROM engines ORDER BY ord")]
    for key, fingerprint, job_id, at in conn.execute(
            "SELECT key, hash, job_id, at FROM idempotency WHERE hash IS NOT NULL "
            "ORDER BY at, key"):
        farm.idempotency[key] = {"hash": fingerprint, "job_id": job_id, "at": at}
    for job_id, record in conn.execute("SELECT job_id, record FROM deliveries ORDER BY job_id"):
        farm.deliveries[job_id] = record
    return farm


def write_database(conn: psycopg.Connection[Any], farm: Farm) -> None:
    migrate.upgrade(conn)
    with conn.transaction():
        for table in _STATE_TABLES:
            row = conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()
            if row and row[0]:
                raise errors.StateError(
                    f"refusing to write to the database: its {table} table is not empty "
                    "(the target must be empty)")
        with conn.cursor() as cur:
            with cur.copy(f"COPY jobs ({JOB_COLUMNS}) FROM STDIN") as copy:
                for job in farm.jobs:
                    events = farm.history.get(job.job_id)
                    copy.write_row(job_columns(job, None if events is None
                                               else history.encode(events)))
            cur.executemany("INSERT INTO engines (engine_id, record) VALUES (%s, %s)",
                            [(e.engine_id, Jsonb(e.to_record())) for e in farm.engines])
            cur.executemany(
                "INSERT INTO idempotency (key, hash, job_id, at) VALUES (%s, %s, %s, %s)",
                [(key, e["hash"], e["job_id"], e["at"]) for key, e in farm.idempotency.items()])
            cur.executemany(
                "INSERT INTO deliveries (job_id, state, next_at, record) "
                "VALUES (%s, %s, %s, %s)",
                [(job_id, d["state"], d.get("next_at") or 0.0, Jsonb(d))
                 for job_id, d in farm.deliveries.items()])
        # New ids go on after every one copied.
        next_seq = max((job.seq for job in farm.jobs), default=-1) + 1
        conn.execute("SELECT setval('job_seq', %s, false)", (next_seq,))


# ----------------------------------------------------------------- both ways


def copy_state(source: str, target: str, password_file: str | None = None) -> Farm:
    """Copy the farm at ``source`` to ``target`` (each a state file path or a
    ``postgresql://`` URL); raise StateError (refused) or Unavailable (no database)."""
    if is_database(source):
        with connect(conninfo(source, password_file, application="copy-state"),
                     unbounded=True) as conn:
            farm = read_database(conn)
    else:
        farm = read_file(source)
    if is_database(target):
        with connect(conninfo(target, password_file, application="copy-state"),
                     unbounded=True) as conn:
            write_database(conn, farm)
    else:
        write_file(target, farm)
    return farm
