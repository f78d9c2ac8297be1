"""The in-memory state: jobs, engines and the tables beside them, with every index.

Not thread-safe on its own: the memory backend calls it under its lock. ``put`` and
``restore`` are the only ways in, so an index can never disagree with its table, and a
change the store refused can be undone exactly (``put`` returns what it replaced).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from sortedcontainers import SortedKeyList, SortedList

from dispatch import callbacks, errors, history
from dispatch.models import ACTIVE_STATUSES, FINISHED_STATUSES, JOB_STATUSES, Engine, Job
from dispatch.persistence import RecoveredState
from dispatch.scheduler import PendingIndex

TABLES = ("events", "idempotency", "delivery")


def _seq_key(job: Job) -> int:
    return job.seq


def _finished_key(job: Job) -> tuple[float, int]:
    return (job.completed_at or 0.0, job.seq)


def _next_counter(jobs: list[Job]) -> int:
    highest = -1
    for job in jobs:
        tail = job.job_id.rpartition("_")[2]
        if tail.isdigit() and int(tail) > highest:
            highest = int(tail)
    return highest + 1


def _id_sort_key(record: Mapping[str, Any]) -> tuple[int, int, str]:
    job_id = str(record.get("job_id", ""))
    head, _, tail = job_id.partition("_")
    try:
        return (int(head), int(tail), job_id)
    except ValueError:
        # Other ids (the C++ benchmark layout's "job_0"): creation time first.
        created = record.get("created_at")
        micros = int(created * 1_000_000) if isinstance(created, (int, float)) else 0
        return (micros, 0, job_id)


class State:
    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now  # the pending index files a job by whether its backoff is over
        self.jobs: dict[str, Job] = {}
        self.engines: dict[str, Engine] = {}
        self.ordered = SortedKeyList(key=_seq_key)
        self.by_status: dict[str, SortedKeyList] = {
            status: SortedKeyList(key=_seq_key) for status in JOB_STATUSES
        }
        self.held: dict[str, dict[str, None]] = {}  # engine id -> ids of active jobs
        self.pending = PendingIndex()
        self.finished = SortedKeyList(key=_finished_key)  # for retention purges
        self.completions = SortedList()  # completed_at of completed jobs
        self.job_time_sum = 0.0
        self.job_time_count = 0
        self.next_seq = 0
        self.history: dict[str, bytes] = {}  # job id -> its events, encoded
        self.idempotency: OrderedDict[str, dict[str, Any]] = OrderedDict()  # oldest first
        self.deliveries: dict[str, dict[str, Any]] = {}  # job id -> webhook delivery
        self.due_deliveries: dict[str, None] = {}  # job ids of pending deliveries

    def load(self, state: RecoveredState) -> None:
        """Fill the tables from what the store recovered."""
        # Creation order: our ids carry it; the C++ server's ids share the same
        # "{microseconds}_{counter}" form, so sort on both parts.
        records = state.jobs if state.ordered else sorted(state.jobs, key=_id_sort_key)
        try:
            jobs = [Job.from_dict(record, seq) for seq, record in enumerate(records)]
            for record in state.engines:
                engine = Engine.from_dict(record)
                self.engines[engine.engine_id] = engine
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise errors.StateError(
                f"the state holds a record this server cannot read ({exc!r}); "
                "restore the state file from a backup"
            ) from None
        self._index_all(jobs)
        # An id is "{micros}_{counter}": continuing the counter past every one in use
        # keeps a new id unique even when the clock reads no later than an old job's
        # (len(jobs) alone would repeat a counter once jobs were purged).
        self.next_seq = max(len(jobs), _next_counter(jobs))
        tables = state.tables
        for job_id, events in tables.get("events", {}).items():
            self.history[job_id] = history.encode(events)
        for key, entry in sorted(tables.get("idempotency", {}).items(),
                                 key=lambda item: item[1]["at"]):
            self.idempotency[key] = entry
        for job_id, delivery in tables.get("delivery", {}).items():
            self.put_table("delivery", job_id, delivery)
        for job in list(self.jobs.values()):
            if job.status in ACTIVE_STATUSES and job.assigned_engine not in self.engines:
                # A job held by an engine the file does not know can never be
                # reported on; return it to the queue rather than strand it.
                fresh = replace(job, status="pending", assigned_engine=None, progress=None)
                self.set_job(job.job_id, fresh)

    def _index_all(self, jobs: list[Job]) -> None:
        """Build every index at once from jobs in creation order: what ``set_job``
        does one job at a time, in a fraction of the time at start-up."""
        self.jobs = {job.job_id: job for job in jobs}
        self.ordered = SortedKeyList(jobs, key=_seq_key)
        for status in JOB_STATUSES:
            self.by_status[status] = SortedKeyList(
                [job for job in jobs if job.status == status], key=_seq_key)
        self.finished = SortedKeyList(
            [job for job in jobs if job.status in FINISHED_STATUSES], key=_finished_key)
        completed = [job for job in self.by_status["completed"] if job.completed_at is not None]
        self.completions = SortedList(job.completed_at for job in completed)
        timed = [job.completed_at - job.assigned_at for job in completed  # type: ignore[operator]
                 if job.assigned_at is not None]
        self.job_time_sum, self.job_time_count = sum(timed), len(timed)
        now = self.now()
        for job in self.by_status["pending"]:
            self.pending.add(job, now)
        for status in ACTIVE_STATUSES:
            for job in self.by_status[status]:
                if job.assigned_engine is not None:
                    self.held.setdefault(job.assigned_engine, {})[job.job_id] = None

    # One door for every kind of entry; ``put`` returns what it replaced, for undo.

    def put(self, kind: str, key: str, value: Any) -> Any:
        if kind == "job":
            old_job = self.jobs.get(key)
            self.set_job(key, value)
            return old_job
        if kind == "engine":
            old_engine = self.engines.get(key)
            self.set_engine(key, value)
            return old_engine
        return self.put_table(kind, key, value)

    def restore(self, kind: str, key: str, old: Any) -> None:
        if kind == "job":
            self.set_job(key, old)
        elif kind == "engine":
            self.set_engine(key, old)
        else:
            self.restore_table(kind, key, old)

    def active_count(self) -> int:
        return len(self.by_status["assigned"]) + len(self.by_status["processing"])

    def set_job(self, job_id: str, new: Job | None) -> None:
        """Put ``new`` in place of the current job (None deletes); keep every index."""
        old = self.jobs.get(job_id)
        if old is not None:
            self.ordered.remove(old)
            self.by_status[old.status].remove(old)
            if old.status == "pending":
                self.pending.remove(old)
            elif old.status in FINISHED_STATUSES:
                self.finished.remove(old)
            if old.status in ACTIVE_STATUSES and old.assigned_engine is not None:
                held = self.held.get(old.assigned_engine)
                if held is not None:
                    held.pop(job_id, None)
                    if not held:
                        del self.held[old.assigned_engine]
            if old.status == "completed" and old.completed_at is not None:
                self.completions.remove(old.completed_at)
                if old.assigned_at is not None:
                    self.job_time_sum -= old.completed_at - old.assigned_at
                    self.job_time_count -= 1
        if new is None:
            self.jobs.pop(job_id, None)
            return
        self.jobs[job_id] = new
        self.ordered.add(new)
        self.by_status[new.status].add(new)
        if new.status == "pending":
            self.pending.add(new, self.now())
        elif new.status in FINISHED_STATUSES:
            self.finished.add(new)
        if new.status in ACTIVE_STATUSES and new.assigned_engine is not None:
            self.held.setdefault(new.assigned_engine, {})[job_id] = None
        if new.status == "completed" and new.completed_at is not None:
            self.completions.add(new.completed_at)
            if new.assigned_at is not None:
                self.job_time_sum += new.completed_at - new.assigned_at
                self.job_time_count += 1


    def set_engine(self, engine_id: str, new: Engine | None) -> None:
        if new is None:
            self.engines.pop(engine_id, None)
        else:
            self.engines[engine_id] = new


    def derived(self, job_id: str, old: Job | None, new: Job | None,
                failure: history.FailureKind | None = None) -> list[tuple[str, str, Any]]:
        """The table entries a job change implies: its history events and, when it
        has just finished with a callback URL, its webhook delivery."""
        derived: list[tuple[str, str, Any]] = []
        if new is None:  # purged: its history and delivery go with it
            if job_id in self.history:
                derived.append(("events", job_id, None))
            if job_id in self.deliveries:
                derived.append(("delivery", job_id, None))
            return derived
        now = new.updated_at  # the job's own time of this change
        events = history.transition_events(old, new, now, failure)
        if events:
            derived.append(("events", job_id,
                            history.append(self.history.get(job_id), events)))
        finished_now = new.status in FINISHED_STATUSES and (
            old is None or old.status not in FINISHED_STATUSES)
        if finished_now and new.callback_url:
            derived.append(("delivery", job_id,
                            callbacks.new_delivery(new, now, self.deliveries.get(job_id))))
        return derived

    def put_table(self, kind: str, key: str, value: Any) -> Any:
        old: Any
        if kind == "events":
            old = self.history.get(key)
            if value is None:
                self.history.pop(key, None)
            else:
                self.history[key] = history.encode(value)
            return old
        if kind == "idempotency":
            # Re-inserted, not updated in place: the table stays oldest first, which
            # is what lets expiry stop at the first key still young.
            old = self.idempotency.pop(key, None)
            if value is not None:
                self.idempotency[key] = value
            return old
        if kind == "delivery":
            old = self.deliveries.get(key)
            if value is None:
                self.deliveries.pop(key, None)
                self.due_deliveries.pop(key, None)
            else:
                self.deliveries[key] = value
                if value["state"] == "pending":
                    self.due_deliveries[key] = None
                else:
                    self.due_deliveries.pop(key, None)
            return old
        raise ValueError(f"unknown table {kind!r}")


    def restore_table(self, kind: str, key: str, old: Any) -> None:
        if kind == "events":
            if old is None:
                self.history.pop(key, None)
            else:
                self.history[key] = old
        elif kind == "idempotency" and old is not None:
            self.idempotency[key] = old
            self.idempotency.move_to_end(key, last=False)  # it was older than the rest
        else:
            self.put_table(kind, key, old)

