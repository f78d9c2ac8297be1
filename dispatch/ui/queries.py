"""What the dashboard's pages read: pure functions of the state.

The quick ones run under the service's lock (``DispatchService.read``). A filter the
indexes cannot answer (codec, engine, text) scans: it copies the table's references
under the lock (jobs are immutable) and filters outside it, so a search over 100,000
jobs never holds up the engines' requests. The default page and a status filter are
read from the sorted indexes: their cost does not grow with the number of jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

import orjson

from dispatch import codecs, reports
from dispatch.models import Engine, Job
from dispatch.service import DispatchService
from dispatch.state import State

PAGE_SIZE = 50
RECENT_JOBS = 20
CHART_MINUTES = 60


@dataclass(frozen=True)
class JobFilter:
    """The jobs page's filters; an empty field matches everything."""

    status: str = ""
    codec: str = ""
    engine: str = ""
    text: str = ""

    @property
    def indexed(self) -> bool:
        return not (self.codec or self.engine or self.text)

    def matcher(self, history: Mapping[str, bytes]) -> Callable[[Job], bool]:
        """A predicate for the filters the indexes cannot answer."""
        family = codecs.family(self.codec) if self.codec else None
        in_family: dict[str, bool] = {}  # per codec name: a farm has a handful
        ran_on = _ran_on(self.engine, history) if self.engine else None
        text = self.text.lower() or None

        def matches(job: Job) -> bool:
            if family is not None:
                codec = job.target_codec
                found = in_family.get(codec)
                if found is None:
                    found = in_family[codec] = codecs.family(codec) == family
                if not found:
                    return False
            if ran_on is not None and not ran_on(job):
                return False
            if text is not None and not (
                text in job.job_id.lower() or text in job.source_url.lower()
                or (job.error_message is not None and text in job.error_message.lower())
            ):
                return False
            return True

        return matches

    def args(self) -> dict[str, str]:
        """The filter as query arguments (for links that keep it)."""
        return {key: value for key, value in (("status", self.status), ("codec", self.codec),
                                              ("engine", self.engine), ("q", self.text))
                if value}


def _ran_on(engine_id: str, history: Mapping[str, bytes]) -> Callable[[Job], bool]:
    """Jobs the engine holds or held: a failed or released job no longer names its
    engine, its history does (searched as bytes, without decoding it)."""
    quoted = orjson.dumps(engine_id)

    def ran_on(job: Job) -> bool:
        return job.assigned_engine == engine_id or quoted in history.get(job.job_id, b"")

    return ran_on


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    total: int
    offset: int
    limit: int


def _table(state: State, status: str) -> Any:
    return state.by_status[status] if status else state.ordered


def find_jobs(service: DispatchService, where: JobFilter, offset: int = 0,
              limit: int = PAGE_SIZE) -> JobPage:
    """One page of the matching jobs, newest first, and how many match."""
    if where.indexed:
        def page(state: State, _now: float) -> JobPage:
            table = _table(state, where.status)
            total = len(table)
            # Newest first: count back from the end of the creation-ordered index.
            stop = max(0, total - offset)
            start = max(0, stop - limit)
            return JobPage(list(table.islice(start, stop, reverse=True)), total, offset, limit)

        return service.read(page)
    matching = matching_jobs(service, where)
    return JobPage(matching[offset:offset + limit], len(matching), offset, limit)


def matching_jobs(service: DispatchService, where: JobFilter) -> list[Job]:
    """Every job the filter matches, newest first."""
    table, history = service.read(
        lambda state, _now: (list(_table(state, where.status)), state.history))
    if where.indexed:
        table.reverse()
        return table
    # The history table is read outside the lock: one dict lookup at a time (atomic),
    # and its values are immutable bytes.
    matches = where.matcher(history)
    return [job for job in reversed(table) if matches(job)]


def overview(service: DispatchService) -> dict[str, Any]:
    """The overview page: counts by status, the pending queue by codec and priority,
    the oldest pending job's age, engines by status, and what finished in the last
    hour (copied under the lock, counted per minute outside it)."""

    def read(state: State, now: float) -> dict[str, Any]:
        pending = state.by_status["pending"]
        recent = list(state.finished.irange_key(min_key=(now - CHART_MINUTES * 60, -1)))
        return {
            "jobs": reports.job_counts(state),
            "total": len(state.jobs),
            "pending_by": state.pending.counts(),
            "oldest_pending_age": max(0.0, now - pending[0].created_at) if pending else None,
            "engines": reports.engine_counts(state),
            "recent": recent,
            "now": now,
        }

    data = service.read(read)
    now = data["now"]
    completed = [0] * CHART_MINUTES
    failed = [0] * CHART_MINUTES
    for job in data.pop("recent"):
        # Minute 0 is the oldest of the hour, minute 59 the current one.
        minute = CHART_MINUTES - 1 - int((now - (job.completed_at or now)) // 60)
        if 0 <= minute < CHART_MINUTES:
            if job.status == "completed":
                completed[minute] += 1
            elif job.status == "failed":
                failed[minute] += 1
    data["per_minute"] = {"completed": completed, "failed": failed}
    data["pending_by"] = sorted(data["pending_by"].items(),
                                key=lambda item: (item[0][0], -item[0][1]))
    return data


@dataclass(frozen=True)
class EngineRow:
    engine: Engine
    status: str
    heartbeat_age: float
    current: list[Job]


def _engine_row(state: State, engine: Engine, now: float) -> EngineRow:
    held = state.held.get(engine.engine_id, {})
    return EngineRow(engine, state.engine_status(engine), max(0.0, now - engine.last_heartbeat),
                     [state.jobs[job_id] for job_id in held])


def engines(service: DispatchService) -> list[EngineRow]:
    def read(state: State, now: float) -> list[EngineRow]:
        return [_engine_row(state, engine, now)
                for engine in sorted(state.engines.values(), key=lambda e: e.engine_id)]

    return service.read(read)


def engine(service: DispatchService, engine_id: str) -> EngineRow | None:
    def read(state: State, now: float) -> EngineRow | None:
        found = state.engines.get(engine_id)
        return None if found is None else _engine_row(state, found, now)

    return service.read(read)


def recent_jobs(service: DispatchService, engine_id: str,
                limit: int = RECENT_JOBS) -> list[Job]:
    """The latest jobs the engine holds or held, newest first (found by scanning back
    from the newest job, outside the lock)."""
    table, history = service.read(lambda state, _now: (list(state.ordered), state.history))
    ran_on = _ran_on(engine_id, history)
    return list(islice((job for job in reversed(table) if ran_on(job)), limit))

