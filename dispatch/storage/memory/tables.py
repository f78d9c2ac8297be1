"""The memory backend's tables: one class for each kind of record, each with its
indexes, its ``put`` (returns what it replaced) and its ``restore`` (puts that back,
for undo). Not thread-safe on their own: the backend uses them under its lock.

``kind`` names a table in the journal's records and the snapshot; ``record`` is the
JSON form an entry is persisted as (None when it is deleted).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sortedcontainers import SortedKeyList, SortedList

from dispatch.domain import history
from dispatch.domain.history import Event
from dispatch.domain.models import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    JOB_STATUSES,
    Delivery,
    Engine,
    IdempotencyEntry,
    Job,
)
from dispatch.domain.scheduler import PendingIndex

V = TypeVar("V")


def _seq_key(job: Job) -> int:
    return job.seq


def _finished_key(job: Job) -> tuple[float, int]:
    return (job.completed_at or 0.0, job.seq)


class Table(Generic[V]):
    """A dict of entries by key; subclasses keep their indexes in step."""

    kind = ""

    def __init__(self) -> None:
        self.rows: dict[str, V] = {}

    def put(self, key: str, value: V | None) -> V | None:
        old = self.rows.get(key)
        if value is None:
            self.rows.pop(key, None)
        else:
            self.rows[key] = value
        return old

    def restore(self, key: str, old: Any) -> None:
        self.put(key, old)

    def record(self, value: V | None) -> Any:
        return None if value is None else value.to_record()  # type: ignore[attr-defined]


class Jobs(Table[Job]):
    """Jobs with every index the ports read: creation order, by status, the pending
    queue (``scheduler.PendingIndex``), what each engine holds, the finished ones by
    finishing time, the completion times and the running sum of job times.

    Chunked-encoding tasks (``parent_id``) are in the pending queue and what engines
    hold, and under their parent (``children``), never in the listings (creation
    order, by status, finished, completions): clients see jobs. A parent is in the
    listings; it is never held, so it is not counted among the active jobs."""

    kind = "job"

    def __init__(self, now: Callable[[], float]) -> None:
        super().__init__()
        self.now = now  # the pending index files a job by whether its backoff is over
        self.ordered = SortedKeyList(key=_seq_key)
        self.by_status: dict[str, SortedKeyList] = {
            status: SortedKeyList(key=_seq_key) for status in JOB_STATUSES}
        self.held: dict[str, dict[str, None]] = {}  # engine id -> ids of active jobs
        self.pending = PendingIndex()
        self.finished = SortedKeyList(key=_finished_key)  # for retention purges
        self.completions = SortedList()  # completed_at of completed jobs
        self.job_time_sum = 0.0
        self.job_time_count = 0
        self.next_seq = 0
        self.children: dict[str, dict[str, None]] = {}  # parent id -> ids of its tasks
        self.active_tasks = 0
        self.active_parents = 0

    def index_all(self, jobs: list[Job]) -> None:
        """Build every index at once from jobs in creation order: what ``put`` does
        one job at a time, in a fraction of the time at start-up."""
        self.rows = {job.job_id: job for job in jobs}
        tasks = [job for job in jobs if job.parent_id is not None]
        if tasks:
            jobs = [job for job in jobs if job.parent_id is None]
        self.ordered = SortedKeyList(jobs, key=_seq_key)
        for status in JOB_STATUSES:
            self.by_status[status] = SortedKeyList(
                [job for job in jobs if job.status == status], key=_seq_key)
        self.finished = SortedKeyList(
            [job for job in jobs if job.status in FINISHED_STATUSES], key=_finished_key)
        completed = [job for job in self.by_status["completed"]
                     if job.completed_at is not None]
        self.completions = SortedList(job.completed_at for job in completed)
        timed = [job.completed_at - job.assigned_at for job in completed  # type: ignore[operator]
                 if job.assigned_at is not None]
        self.job_time_sum, self.job_time_count = sum(timed), len(timed)
        now = self.now()
        for job in self.by_status["pending"]:
            self.pending.add(job, now)
        for status in ACTIVE_STATUSES:
            for job in self.by_status[status]:
                if job.chunk_seconds is not None:
                    self.active_parents += 1
                elif job.assigned_engine is not None:
                    self.held.setdefault(job.assigned_engine, {})[job.job_id] = None
        for task in tasks:
            self._index_task(task, now)

    def _index_task(self, task: Job, now: float) -> None:
        assert task.parent_id is not None
        self.children.setdefault(task.parent_id, {})[task.job_id] = None
        if task.status == "pending":
            self.pending.add(task, now)
        elif task.status in ACTIVE_STATUSES:
            self.active_tasks += 1
            if task.assigned_engine is not None:
                self.held.setdefault(task.assigned_engine, {})[task.job_id] = None

    def _unindex_task(self, task: Job) -> None:
        assert task.parent_id is not None
        siblings = self.children.get(task.parent_id)
        if siblings is not None:
            siblings.pop(task.job_id, None)
            if not siblings:
                del self.children[task.parent_id]
        if task.status == "pending":
            self.pending.remove(task)
        elif task.status in ACTIVE_STATUSES:
            self.active_tasks -= 1
            self._release(task)

    def _release(self, job: Job) -> None:
        if job.assigned_engine is not None:
            held = self.held.get(job.assigned_engine)
            if held is not None:
                held.pop(job.job_id, None)
                if not held:
                    del self.held[job.assigned_engine]

    def in_creation_order(self) -> list[Job]:
        """Every job and task, oldest first (snapshots, moving a farm)."""
        rows = self.rows
        tasks = sorted((rows[task_id] for ids in self.children.values() for task_id in ids),
                       key=_seq_key)
        if not tasks:
            return list(self.ordered)
        return list(heapq.merge(self.ordered, tasks, key=_seq_key))

    def active_count(self) -> int:
        return (len(self.by_status["assigned"]) + len(self.by_status["processing"])
                - self.active_parents + self.active_tasks)

    def put(self, key: str, value: Job | None) -> Job | None:
        # One method, not an unindex and an index call: it runs on every job change.
        old = self.rows.get(key)
        if (old is not None and old.parent_id is not None) \
                or (value is not None and value.parent_id is not None):
            return self._put_task(key, old, value)
        if old is not None and old.chunk_seconds is not None and old.status == "processing":
            self.active_parents -= 1
        if value is not None and value.chunk_seconds is not None \
                and value.status == "processing":
            self.active_parents += 1
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
                    held.pop(key, None)
                    if not held:
                        del self.held[old.assigned_engine]
            if old.status == "completed" and old.completed_at is not None:
                self.completions.remove(old.completed_at)
                if old.assigned_at is not None:
                    self.job_time_sum -= old.completed_at - old.assigned_at
                    self.job_time_count -= 1
        if value is None:
            self.rows.pop(key, None)
            return old
        self.rows[key] = value
        self.ordered.add(value)
        self.by_status[value.status].add(value)
        if value.status == "pending":
            self.pending.add(value, self.now())
        elif value.status in FINISHED_STATUSES:
            self.finished.add(value)
        if value.status in ACTIVE_STATUSES and value.assigned_engine is not None:
            self.held.setdefault(value.assigned_engine, {})[key] = None
        if value.status == "completed" and value.completed_at is not None:
            self.completions.add(value.completed_at)
            if value.assigned_at is not None:
                self.job_time_sum += value.completed_at - value.assigned_at
                self.job_time_count += 1
        return old

    def _put_task(self, key: str, old: Job | None, value: Job | None) -> Job | None:
        if old is not None:
            self._unindex_task(old)
        if value is None:
            self.rows.pop(key, None)
        else:
            self.rows[key] = value
            self._index_task(value, self.now())
        return old


class Engines(Table[Engine]):
    kind = "engine"


class Histories(Table[bytes]):
    """Each job's history, kept encoded (a few hundred bytes, not a list of
    objects); put as the whole list of events."""

    kind = "events"

    def put(self, key: str, value: Any) -> bytes | None:
        rows = self.rows
        old = rows.get(key)
        if value is None:
            rows.pop(key, None)
        else:
            rows[key] = history.encode(value)
        return old

    def restore(self, key: str, old: Any) -> None:
        if old is None:
            self.rows.pop(key, None)
        else:
            self.rows[key] = old  # already encoded

    def record(self, value: Any) -> Any:
        return value  # the events as put

    def events(self, job_id: str) -> list[Event]:
        return history.decode(self.rows.get(job_id))


class IdempotencyKeys(Table[IdempotencyEntry]):
    """Oldest first: an entry is re-inserted, not updated in place, which is what
    lets expiry stop at the first key still young."""

    kind = "idempotency"

    def __init__(self) -> None:
        super().__init__()
        self.rows: OrderedDict[str, IdempotencyEntry] = OrderedDict()

    def put(self, key: str, value: IdempotencyEntry | None) -> IdempotencyEntry | None:
        old = self.rows.pop(key, None)
        if value is not None:
            self.rows[key] = value
        return old

    def restore(self, key: str, old: Any) -> None:
        if old is None:
            self.rows.pop(key, None)
        else:
            self.rows[key] = old
            self.rows.move_to_end(key, last=False)  # it was older than the rest


class Deliveries(Table[Delivery]):
    """Webhook deliveries by job id, and the ids of those still pending."""

    kind = "delivery"

    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[str, None] = {}

    def put(self, key: str, value: Delivery | None) -> Delivery | None:
        old = super().put(key, value)
        if value is not None and value.state == "pending":
            self.pending[key] = None
        else:
            self.pending.pop(key, None)
        return old
