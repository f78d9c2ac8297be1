"""The backend contract for chunked encoding: a chunked job's parent is a job of the
listings and counts that no claim ever returns; its tasks are jobs that the listings
and counts leave out, that ``tasks_of`` returns, that count among the active jobs
when held, and that only an engine advertising their kind claims. On every backend,
and across a restart."""

from __future__ import annotations

from dataclasses import replace
from itertools import count
from typing import Any

from dispatch.domain import chunking
from dispatch.domain.job_search import JobFilter
from dispatch.domain.models import Job
from dispatch.service.ports import Transaction
from tests.conftest import FakeClock
from tests.contract.test_backend_contract import claim, engine, submit
from tests.support.backends import Harness

PROBE = {"frames": 900, "frame_rate": "30/1", "start_time": 0.0, "audio": None}


def chunked_job(tx: Transaction, now: float, **fields: Any) -> tuple[Job, list[Job]]:
    """A parent with its plan (completed) and its three chunk tasks, all stored."""
    parent = submit(tx, now, chunk_seconds=10, **fields)
    plan = chunking.plan_task(parent, 1, tx.jobs.allocate_seq(), now)
    tx.jobs.put(replace(plan, status="completed", completed_at=now))
    seqs = (tx.jobs.allocate_seq() for _ in count())
    chunks = chunking.plan_tasks(parent, 1, PROBE, parent.source_url, seqs, now)
    for chunk in chunks:
        tx.jobs.put(chunk)
    return parent, chunks


def test_tasks_are_out_of_the_listings_and_under_their_parent(harness: Harness) -> None:
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        whole = submit(tx, now)
        parent, chunks = chunked_job(tx, now, priority=2)
    with backend.read() as tx:
        jobs, total = tx.jobs.page(None, 0, 10)
        assert ([j.job_id for j in jobs], total) == ([whole.job_id, parent.job_id], 2)
        assert tx.jobs.page("pending", 0, 10)[1] == 2
        assert tx.jobs.page("completed", 0, 10) == ([], 0)
        assert (tx.jobs.counts()["pending"], tx.jobs.counts()["completed"]) == (2, 0)
        assert tx.jobs.total() == 2
        assert [j.job_id for j in tx.jobs.search(JobFilter(), 0, 10)[0]] == [
            parent.job_id, whole.job_id]
        assert sum(tx.jobs.pending_counts().values()) == 2
        assert tx.jobs.finished_since(now - 1) == []
        assert tx.jobs.reserve_room(1, 2) == 2  # tasks take no room in the queue
        assert [t.job_id for t in tx.jobs.tasks_of(parent.job_id)] == [
            f"{parent.job_id}.g1.plan", *(c.job_id for c in chunks)]
        assert tx.jobs.tasks_of(whole.job_id) == []
        assert tx.jobs.get(chunks[1].job_id) == chunks[1]
    with backend.transaction() as tx:
        tx.jobs.delete(chunks[2].job_id)
    with backend.read() as tx:
        assert len(tx.jobs.tasks_of(parent.job_id)) == 3


def test_only_an_engine_with_the_kind_claims_a_task(harness: Harness,
                                                    clock: FakeClock) -> None:
    backend = harness.open()
    with backend.transaction() as tx:
        tx.engines.put(engine("cpp"))
        tx.engines.put(engine("py", task_kinds=("chunk",)))
        tx.engines.put(engine("planner", task_kinds=("plan",)))
        parent, chunks = chunked_job(tx, harness.now(), priority=5)
    clock.advance(1)
    with backend.transaction() as tx:
        whole = submit(tx, harness.now())
    now = harness.now()
    first = claim(backend, "cpp", now)  # after the tasks, with a lower priority
    assert first is not None and first.job_id == whole.job_id
    assert claim(backend, "cpp", now) is None
    assert claim(backend, "planner", now) is None  # no plan pending; never the parent
    taken = [claim(backend, "py", now) for _ in range(4)]
    assert [t.job_id if t else None for t in taken] == [
        *(c.job_id for c in chunks), None]
    with backend.read() as tx:
        assert tx.jobs.active_count() == 4
        assert set(tx.jobs.held_by("py")) == {c.job_id for c in chunks}
        assert tx.jobs.holds_any("py")
        assert tx.jobs.counts()["assigned"] == 1  # the whole job; tasks are not counted


def test_a_processing_parent_is_not_active_and_the_limit_counts_tasks(
        harness: Harness) -> None:
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        tx.engines.put(engine("py", task_kinds=("chunk",)))
        parent, _ = chunked_job(tx, now)
        tx.jobs.put(replace(parent, status="processing", updated_at=now))
    with backend.read() as tx:
        assert tx.jobs.active_count() == 0 and tx.jobs.counts()["processing"] == 1
        assert list(tx.jobs.held()) == []
    assert claim(backend, "py", now, max_active=1) is not None
    assert claim(backend, "py", now, max_active=1) is None


def test_a_restart_keeps_parents_and_tasks(durable_harness: Harness,
                                           clock: FakeClock) -> None:
    harness = durable_harness
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        tx.engines.put(engine("py", task_kinds=("chunk",)))
        parent, chunks = chunked_job(tx, now)
        tx.jobs.put(replace(parent, status="processing", updated_at=now))
    held = claim(backend, "py", now)
    assert held is not None
    for snapshot in (False, True):
        backend = harness.restart(snapshot=snapshot)
        with backend.read() as tx:
            assert [t.job_id for t in tx.jobs.tasks_of(parent.job_id)][1:] == [
                c.job_id for c in chunks]
            assert tx.jobs.get(parent.job_id).status == "processing"  # type: ignore[union-attr]
            assert tx.jobs.page(None, 0, 10)[1] == 1
            assert tx.jobs.held_by("py") == (held.job_id,)
            assert tx.jobs.active_count() == 1
    second = claim(backend, "py", harness.now())
    assert second is not None and second.job_id == chunks[1].job_id
