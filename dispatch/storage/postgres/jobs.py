"""The PostgreSQL job repository (``ports.JobRepository``), a view of one open unit
(``backend.Unit``); the other repositories are in ``records``.

How each rule that reads and then writes is made atomic across processes:

- a job or engine read ``for update`` is row-locked until the unit ends;
- queue room: the unit takes an advisory lock, then counts, so two submissions
  cannot both take the last place (``Jobs._within``);
- choosing a job: the unit takes the claim lock the same way (the concurrency
  limit is a count),
  reads the best candidates of every (codec family, priority) bucket through the
  partial indexes, lets ``scheduler.pick_job`` choose among them (the rules live there
  only), and locks the chosen row with ``FOR UPDATE SKIP LOCKED``, re-checking that
  it is still pending; a row another unit holds is passed over for the next choice;
- idempotency: a unique key (``records.Idempotency``);
- job ids: ``job_seq``, a sequence, never hands out a number twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from dispatch.domain import codecs, history
from dispatch.domain.changes import derive
from dispatch.domain.history import Event, FailureKind
from dispatch.domain.job_search import JobFilter
from dispatch.domain.models import JOB_STATUSES, Engine, Job
from dispatch.domain.scheduler import LOOKAHEAD, PendingIndex, Policy, pick_job
from dispatch.storage.postgres.job_rows import (
    SELECT_JOB,
    SELECT_JOB_EVENTS,
    UPSERT_JOB,
    job_columns,
    job_from_row,
)
from dispatch.storage.postgres.migrate import LOCK_SPACE
from dispatch.storage.postgres.records import Repository

if TYPE_CHECKING:
    from collections.abc import Iterable

    from dispatch.storage.postgres.backend import Unit

ROOM_LOCK = 1
CLAIM_LOCK = 2
CLAIM_ROUNDS = 4  # fresh candidate lists read when other units hold every one
POSITION_SCAN = 2000  # index entries counted one by one for a queue position, at most

_ACTIVE = "status IN ('assigned', 'processing')"
_HELD = ("assigned", "processing")
_RUN = ("job", "task")  # what engines run: a parent is never held
_FINISHED = "status IN ('completed', 'failed', 'cancelled')"

# index scan), then the oldest ready jobs of each bucket that the engine could take.
_CANDIDATES = """
WITH RECURSIVE p AS (
    (SELECT priority FROM jobs WHERE status = 'pending' ORDER BY priority DESC LIMIT 1)
    UNION ALL
    SELECT (SELECT j.priority FROM jobs j WHERE j.status = 'pending'
            AND j.priority < p.priority ORDER BY j.priority DESC LIMIT 1)
    FROM p WHERE p.priority IS NOT NULL
)
SELECT c.record, c.seq
FROM p CROSS JOIN unnest(%(kinds)s::text[]) AS k(kind) {families} CROSS JOIN LATERAL (
    SELECT record, seq FROM jobs
    WHERE status = 'pending' AND kind = k.kind AND priority = p.priority {family_match}
      AND (retry_at IS NULL OR retry_at <= %(now)s)
      AND (%(capacity)s::float8 IS NULL OR job_size <= %(capacity)s::float8)
      AND job_id <> ALL(%(passed)s::text[])
    ORDER BY {order} LIMIT %(per_bucket)s
) c
WHERE p.priority IS NOT NULL
"""
# Each kind the engine takes ('job', and the task kinds it advertises; never 'parent')
# is read through its own index buckets.
_CANDIDATES_ANY = _CANDIDATES.format(families="", family_match="",
                                     order="kind, priority, seq")
_CANDIDATES_OF = _CANDIDATES.format(
    families="CROSS JOIN unnest(%(families)s::text[]) AS f(family)",
    family_match="AND codec_family = f.family", order="kind, codec_family, priority, seq")
_JOBS_ONLY = "parent_id IS NULL"  # listings show jobs, never the tasks of chunked ones

class Jobs(Repository):
    __slots__ = ("fresh",)

    def __init__(self, unit: Unit) -> None:
        super().__init__(unit)
        self.fresh: set[int] = set()  # sequence numbers this unit allocated

    def get(self, job_id: str) -> Job | None:
        cached = self.unit.locked.get(job_id)
        if cached is not None:
            return cached[0]
        row = self.unit.rows(SELECT_JOB + " WHERE job_id = %s", (job_id,)).fetchone()
        return job_from_row(row) if row else None

    def _lock(self, job_id: str) -> tuple[Job | None, bytes | None]:
        cached = self.unit.locked.get(job_id)
        if cached is None:
            row = self.unit.rows(f"{SELECT_JOB_EVENTS} WHERE job_id = %s FOR UPDATE",
                                 (job_id,)).fetchone()
            cached = (job_from_row(row), row["events"]) if row else (None, None)
            self.unit.locked[job_id] = cached
        return cached

    def get_for_update(self, job_id: str) -> Job | None:
        return self._lock(job_id)[0]

    def put(self, job: Job, failure: FailureKind | None = None) -> None:
        if job.seq in self.fresh and job.job_id not in self.unit.locked:
            old, old_events = None, None  # created in this unit: nothing to read
        else:
            old, old_events = self._lock(job.job_id)
        deliveries = self.unit.deliveries
        derived = derive(old, job, failure, old_events, deliveries.get_for_update)
        encoded = old_events if derived.history is None else history.encode(derived.history)
        self._write(job, encoded)
        if derived.delivery is not None:
            deliveries.put(derived.delivery)

    def _write(self, job: Job, encoded: bytes | None) -> None:
        self.unit.execute(UPSERT_JOB, job_columns(job, encoded))
        self.unit.locked[job.job_id] = (job, encoded)

    def delete(self, job_id: str) -> None:
        # ``changes.derive`` of a delete: the history is the row's, the delivery goes.
        self.unit.execute("WITH gone AS (DELETE FROM jobs WHERE job_id = %s) "
                          "DELETE FROM deliveries WHERE job_id = %s", (job_id, job_id))
        self.unit.locked[job_id] = (None, None)

    def load(self, job: Job, events: list[Event]) -> None:
        self._write(job, history.encode(events) if events else None)
        # New ids go on after every one loaded.
        self.unit.execute("SELECT setval('job_seq', greatest(%s, "
                          "(SELECT last_value + 1 FROM job_seq)), false)", (job.seq + 1,))

    def dump(self) -> Iterator[tuple[Job, list[Event]]]:
        for row in self.unit.rows(f"{SELECT_JOB_EVENTS} ORDER BY seq"):
            yield job_from_row(row), history.decode(row["events"])

    def allocate_seq(self) -> int:
        row = self.unit.execute("SELECT nextval('job_seq')").fetchone()
        assert row is not None
        self.fresh.add(row[0])
        return int(row[0])

    def _count(self, *statuses: str, kinds: tuple[str, ...] = ("job", "parent")) -> int:
        """Rows in ``statuses``: jobs (chunked ones' parents included) unless
        ``kinds`` says otherwise ('task')."""
        row = self.unit.execute("SELECT coalesce(sum(n), 0) FROM job_counts "
                                "WHERE status = ANY(%s) AND kind = ANY(%s)",
                                (list(statuses), list(kinds))).fetchone()
        return int(row[0]) if row else 0

    def _within(self, lock: int, adding: int, limit: int, *statuses: str,
                kinds: tuple[str, ...] = ("job", "parent")) -> int:
        """Lock the count of jobs in ``statuses`` for a rule that adds ``adding`` to it
        and must keep it within ``limit``; return the count.

        One at a time far from the limit, units share the lock: each in flight adds
        one, and no more units can be in flight than the database has connections,
        so the limit holds without them waiting on one another. Near the limit (and
        for batches) the lock is taken alone, which waits for the sharing units to
        commit. The count is read in a later statement than the lock, so its snapshot
        holds every unit that held the lock before."""
        unit = self.unit
        if adding == 1:
            unlock = f"SELECT pg_advisory_unlock_shared({LOCK_SPACE}, {lock})"
            unit.execute("SELECT pg_advisory_lock_shared(%s, %s)", (LOCK_SPACE, lock))
            unit.after.append(unlock)  # a session lock: released once the unit ended
            current = self._count(*statuses, kinds=kinds)
            if current + adding + unit.connections <= limit:
                return current
            unit.after.remove(unlock)
            unit.execute(unlock)
        unit.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_SPACE, lock))
        return self._count(*statuses, kinds=kinds)

    def reserve_room(self, count: int, limit: int) -> int | None:
        pending = self._within(ROOM_LOCK, count, limit, "pending")
        return None if pending + count <= limit else pending

    def claim_next(self, engine: Engine, capabilities: Iterable[str] | None, now: float,
                   policy: Policy, max_active: int) -> Job | None:
        if self._within(CLAIM_LOCK, 1, max_active, *_HELD, kinds=_RUN) >= max_active:
            return None
        names = list(capabilities) if capabilities is not None else list(
            engine.supported_codecs)
        # The engine as given (pick_job tells it from the others by identity).
        engines = [engine if e.engine_id == engine.engine_id else e
                   for e in self.unit.engines.all()]
        capacity = None if engine.storage_capacity_gb is None \
            else engine.storage_capacity_gb * 1024.0
        params: dict[str, Any] = {"now": now, "capacity": capacity, "passed": [],
                                  "kinds": ["job", *engine.task_kinds],
                                  "per_bucket": LOOKAHEAD + 1,
                                  "families": sorted(codecs.families(names))}
        query = _CANDIDATES_OF if names else _CANDIDATES_ANY
        for _ in range(CLAIM_ROUNDS):
            rows = self.unit.rows(query, params).fetchall()
            if not rows:
                return None
            index = PendingIndex()
            for candidate in rows:
                index.add(job_from_row(candidate), now)
            while (choice := pick_job(index, engine, engines, capabilities, now,
                                      policy)) is not None:
                locked = self.unit.rows(
                    f"{SELECT_JOB_EVENTS} WHERE job_id = %s "
                    "AND status = 'pending' FOR UPDATE SKIP LOCKED", (choice.job_id,)).fetchone()
                if locked is not None:
                    job = job_from_row(locked)
                    self.unit.locked[job.job_id] = (job, locked["events"])
                    return job
                index.remove(choice)  # taken by another unit meanwhile
                params["passed"].append(choice.job_id)
            if len(rows) < LOOKAHEAD + 1:
                return None  # every candidate there is was looked at
        return None

    def tasks_of(self, parent_id: str) -> list[Job]:
        rows = self.unit.rows(f"{SELECT_JOB} WHERE parent_id = %s ORDER BY seq",
                              (parent_id,)).fetchall()
        return [job_from_row(row) for row in rows]

    def held_by(self, engine_id: str) -> Sequence[str]:
        rows = self.unit.execute(
            f"SELECT job_id FROM jobs WHERE assigned_engine = %s AND {_ACTIVE} ORDER BY seq",
            (engine_id,)).fetchall()
        return tuple(row[0] for row in rows)

    def holds_any(self, engine_id: str) -> bool:
        row = self.unit.execute(
            f"SELECT EXISTS (SELECT 1 FROM jobs WHERE assigned_engine = %s AND {_ACTIVE})",
            (engine_id,)).fetchone()
        return bool(row and row[0])

    def held(self) -> list[Job]:
        rows = self.unit.rows(
            f"{SELECT_JOB} WHERE {_ACTIVE} AND assigned_engine IS NOT NULL ORDER BY seq"
        ).fetchall()
        return [job_from_row(row) for row in rows]

    def active_count(self) -> int:
        return self._count(*_HELD, kinds=_RUN)

    def page(self, status: str | None, offset: int, limit: int) -> tuple[list[Job], int]:
        if status is None:
            rows = self.unit.rows(f"{SELECT_JOB} WHERE {_JOBS_ONLY} ORDER BY seq "
                                  "OFFSET %s LIMIT %s", (offset, limit)).fetchall()
            total = self.total()
        else:
            rows = self.unit.rows(
                f"{SELECT_JOB} WHERE status = %s AND {_JOBS_ONLY} ORDER BY seq "
                "OFFSET %s LIMIT %s",
                (status, offset, limit)).fetchall()
            total = self._count(status)
        return [job_from_row(row) for row in rows], total

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(JOB_STATUSES, 0)
        for status, count in self.unit.execute(
                "SELECT status, sum(n) FROM job_counts WHERE kind <> 'task' "
                "GROUP BY status").fetchall():
            counts[status] = int(count)
        return counts

    def total(self) -> int:
        return self._count(*JOB_STATUSES)

    def oldest_pending(self) -> Job | None:
        row = self.unit.rows(
            f"{SELECT_JOB} WHERE status = 'pending' AND {_JOBS_ONLY} ORDER BY seq LIMIT 1"
        ).fetchone()
        return job_from_row(row) if row else None

    def queue_position(self, job: Job, now: float) -> int:
        """1 + the ready jobs of its codec family ahead: from the counts by family and
        priority, less the jobs in backoff; within the job's own bucket, the bucket's
        count less the jobs created since it (a short index scan for a recent job), or
        for a job far from the end, the jobs before it counted in the index."""
        unit = self.unit
        key = {"family": codecs.family(job.target_codec), "now": now,
               "priority": job.priority, "seq": job.seq, "few": POSITION_SCAN}
        bucket = ("status = 'pending' AND codec_family = %(family)s "
                  "AND priority = %(priority)s")
        ready = "(retry_at IS NULL OR retry_at <= %(now)s)"
        row = unit.execute(
            "SELECT coalesce(sum(n) FILTER (WHERE priority > %(priority)s), 0),"
            " coalesce(sum(n) FILTER (WHERE priority = %(priority)s), 0) FROM job_counts"
            " WHERE status = 'pending' AND codec_family = %(family)s", key).fetchone()
        higher, same = (int(row[0]), int(row[1])) if row else (0, 0)
        row = unit.execute(
            "SELECT count(*) FILTER (WHERE priority > %(priority)s),"
            " count(*) FILTER (WHERE priority = %(priority)s AND seq < %(seq)s)"
            " FROM jobs WHERE status = 'pending' AND codec_family = %(family)s"
            " AND retry_at > %(now)s", key).fetchone()
        backoff_higher, backoff_before = (int(row[0]), int(row[1])) if row else (0, 0)
        # A job just submitted (the usual question) is at its bucket's end: count
        # what came since; a job near the front: count what came before.
        row = unit.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM jobs WHERE {bucket} AND seq >= %(seq)s"
            " LIMIT %(few)s) AS since", key).fetchone()
        since = int(row[0]) if row else 0
        if since < POSITION_SCAN:
            before = same - since - backoff_before
        else:
            row = unit.execute(f"SELECT count(*) FROM jobs WHERE {bucket} AND {ready}"
                               " AND seq < %(seq)s", key).fetchone()
            before = int(row[0]) if row else 0
        return 1 + higher - backoff_higher + before

    def finished_before(self, cutoff: float, limit: int) -> list[Job]:
        rows = self.unit.rows(
            f"{SELECT_JOB} WHERE {_FINISHED} AND {_JOBS_ONLY} AND coalesce(completed_at, 0) < %s "
            "ORDER BY coalesce(completed_at, 0), seq LIMIT %s", (cutoff, limit)).fetchall()
        return [job_from_row(row) for row in rows]

    def completion_stats(self, since: float) -> tuple[int, float]:
        recent = self.unit.execute(
            f"SELECT count(*) FROM jobs WHERE status = 'completed' AND {_JOBS_ONLY} "
            "AND completed_at >= %s",
            (since,)).fetchone()
        times = self.unit.execute(
            "SELECT coalesce(sum(time_sum), 0), coalesce(sum(time_n), 0) FROM job_counts "
            "WHERE status = 'completed' AND kind <> 'task'").fetchone()
        total, count = (float(times[0]), int(times[1])) if times else (0.0, 0)
        return (int(recent[0]) if recent else 0), (total / count if count else 0.0)

    # ------------------------------------------------------- the dashboard's

    def search(self, where: JobFilter, offset: int, limit: int) -> tuple[list[Job], int]:
        """The filters of ``job_search`` in SQL: the family column, the engine named
        by the job or in its history (the history holds its id JSON-quoted, as the
        memory backend looks for it), the text in any case."""
        clauses: list[str] = [_JOBS_ONLY]
        params: list[Any] = []
        if where.status:
            clauses.append("status = %s")
            params.append(where.status)
        if where.codec:
            clauses.append("codec_family = %s")
            params.append(codecs.family(where.codec))
        if where.engine:
            clauses.append("(assigned_engine = %s OR position(%s::bytea IN events) > 0)")
            params += [where.engine, orjson.dumps(where.engine)]
        if where.text:
            clauses.append("(strpos(lower(job_id), %s) > 0"
                           " OR strpos(lower(record->>'source_url'), %s) > 0"
                           " OR strpos(lower(coalesce(record->>'error_message', '')), %s) > 0)")
            params += [where.text.lower()] * 3
        condition = f"WHERE {' AND '.join(clauses)}"
        rows = self.unit.rows(f"{SELECT_JOB} {condition} ORDER BY seq DESC OFFSET %s LIMIT %s",
                                 (*params, offset, limit)).fetchall()
        if where.indexed:
            total = self._count(where.status) if where.status else self.total()
        else:
            row = self.unit.execute(f"SELECT count(*) FROM jobs {condition}",
                                    params).fetchone()
            total = int(row[0]) if row else 0
        return [job_from_row(row) for row in rows], total

    def pending_counts(self) -> dict[tuple[str, int], int]:
        rows = self.unit.execute(
            "SELECT codec_family, priority, sum(n) FROM job_counts WHERE status = 'pending'"
            " AND kind <> 'task' GROUP BY codec_family, priority HAVING sum(n) <> 0").fetchall()
        return {(family, priority): int(count) for family, priority, count in rows}

    def finished_since(self, since: float) -> list[tuple[str, float]]:
        rows = self.unit.rows(
            f"SELECT status, completed_at FROM jobs WHERE {_FINISHED} AND {_JOBS_ONLY}"
            " AND coalesce(completed_at, 0) >= %s", (since,)).fetchall()
        return [(row["status"], row["completed_at"] or since) for row in rows]

    def recent_on(self, engine_id: str, limit: int) -> list[Job]:
        rows = self.unit.rows(
            f"{SELECT_JOB} WHERE (assigned_engine = %s OR position(%s::bytea IN events) > 0)"
            f" AND {_JOBS_ONLY} ORDER BY seq DESC LIMIT %s",
            (engine_id, orjson.dumps(engine_id), limit)).fetchall()
        return [job_from_row(row) for row in rows]

    def history(self, job_id: str) -> list[Event]:
        row = self.unit.execute("SELECT events FROM jobs WHERE job_id = %s",
                                (job_id,)).fetchone()
        return history.decode(row[0]) if row else []
