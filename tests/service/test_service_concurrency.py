"""DispatchService under concurrent callers (no Flask): submissions never collide and
each job goes to exactly one engine, with no engine holding two jobs at once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from dispatch.service import DispatchService, present
from dispatch.storage.journal import JournalStore
from dispatch.storage.memory import MemoryBackend
from tests.conftest import BOTH_BACKENDS
from tests.support.postgres import open_service

JOB = {"source_url": "http://example.com/in.mp4", "target_codec": "h264", "job_size": 10.0}


pytestmark = BOTH_BACKENDS


@pytest.fixture
def service(make_settings: Callable[..., Any], backend_kind: str,
            request: Any) -> Iterator[DispatchService]:
    settings = make_settings(job_queue_max_size=10_000, max_concurrent_jobs=10_000)
    if backend_kind == "postgres":
        database = request.getfixturevalue("postgres")
        database.reset()
        service = open_service(database, settings, time.time)
    else:
        service = DispatchService(settings, MemoryBackend(JournalStore(settings.state_file)))
    try:
        yield service
    finally:
        service.close()


def run_together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` for i in range(count) on ``count`` threads released at once;
    re-raise the first exception of any thread."""
    barrier = threading.Barrier(count)

    def task(index: int) -> Any:
        barrier.wait(timeout=30)
        return work(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(task, index) for index in range(count)]
        return [future.result(timeout=120) for future in futures]


def test_concurrent_submissions_get_distinct_ids(service: DispatchService) -> None:
    """16 threads x 100 submissions give 1,600 jobs with 1,600 distinct ids."""
    def submit_many(index: int) -> list[str]:
        submit = service.commands.submit_job
        return [submit({**JOB, "priority": index % 5}).job_id for _ in range(100)]

    ids = [job_id for batch in run_together(16, submit_many) for job_id in batch]
    assert 1600 == len(ids)
    assert 1600 == len(set(ids))
    page = service.queries.list_jobs(None, 1000, 0)
    assert 1600 == page.total
    assert 1600 == service.queries.list_jobs("pending", 1, 0).total
    listed = [job.job_id for job in page.jobs]
    listed += [job.job_id for job in service.queries.list_jobs(None, 1000, 1000).jobs]
    assert set(ids) == set(listed)


def test_racing_engines_each_job_assigned_exactly_once(service: DispatchService) -> None:
    """8 engines racing for 200 jobs: every job is assigned once (attempt 1) and completed
    once, and no engine ever holds two jobs at once."""
    job_ids = [service.commands.submit_job(JOB).job_id for _ in range(200)]
    engines = [f"engine-{n}" for n in range(8)]
    for engine_id in engines:
        service.commands.heartbeat({"engine_id": engine_id})

    def work(index: int) -> list[str]:
        engine_id = engines[index]
        done: list[str] = []
        while True:
            result = service.commands.assign_job(engine_id, None)
            job = result.job
            if job is None:
                return done
            assert not result.redelivered, (engine_id, job.job_id)
            assert engine_id == job.assigned_engine
            assert "assigned" == job.status
            held = present.engine(service.queries.get_engine(engine_id))["current_jobs"]
            assert [job.job_id] == held, (engine_id, held)
            completed = service.commands.complete_job(job.job_id, "http://out/o.mp4", engine_id)
            assert "completed" == completed.status
            done.append(job.job_id)

    per_engine = run_together(len(engines), work)
    served = Counter(job_id for done in per_engine for job_id in done)
    assert set(job_ids) == set(served)
    assert [] == [job_id for job_id, count in served.items() if count != 1]

    for job_id in job_ids:
        job = service.queries.get_job(job_id)
        assert ("completed", 1) == (job.status, job.attempt), job_id
    completed_by_engine = {e: service.queries.get_engine(e).engine.jobs_completed
                           for e in engines}
    assert {e: len(done) for e, done in zip(engines, per_engine, strict=True)} \
        == completed_by_engine
    for engine_id in engines:
        assert [] == present.engine(service.queries.get_engine(engine_id))["current_jobs"]
    assert 200 == service.queries.list_jobs("completed", 1, 0).total
    assert 0 == service.queries.list_jobs("pending", 1, 0).total


def test_racing_engines_single_job_goes_to_one(service: DispatchService) -> None:
    """8 engines asking at the same moment for the only job: exactly one gets it."""
    job_id = service.commands.submit_job(JOB).job_id
    engines = [f"engine-{n}" for n in range(8)]
    for engine_id in engines:
        service.commands.heartbeat({"engine_id": engine_id})

    results = run_together(8, lambda index: service.commands.assign_job(engines[index], None).job)
    winners = [(engines[i], job.job_id) for i, job in enumerate(results) if job is not None]
    assert 1 == len(winners), winners
    winner, won = winners[0]
    assert job_id == won
    assert winner == service.queries.get_job(job_id).assigned_engine
    holding = {e: present.engine(service.queries.get_engine(e))["current_jobs"] for e in engines}
    assert {e: ([job_id] if e == winner else []) for e in engines} == holding
