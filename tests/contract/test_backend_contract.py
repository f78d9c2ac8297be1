"""The backend contract: every behaviour the service relies on from a backend (the
ports in ``dispatch.service.ports``), run against each backend in
``tests/support/backends.py``. A new
backend is done when it implements the ports and passes this suite.

Jobs are built with the service's own rules and put through the ports, so each test
reads like the service's use of them: a unit that commits, one that fails, two that
race for the same row."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from dispatch.config.settings import Settings
from dispatch.domain import errors, history, rules
from dispatch.domain.job_search import JobFilter
from dispatch.domain.models import Delivery, Engine, IdempotencyEntry, Job
from dispatch.domain.scheduler import Policy
from dispatch.service.ports import Transaction, UnitOfWork
from dispatch.service.reports import per_minute
from tests.conftest import FakeClock
from tests.support.backends import Harness

SETTINGS = Settings(api_key="contract-key-0123456789", webhook_allowed_hosts=("hooks.test",))
POLICY = Policy(aging_seconds=600.0, large_job_mb=1024.0)


def submit(tx: Transaction, now: float, **fields: Any) -> Job:
    """A new job through the ports, as the service creates one."""
    data = {"source_url": "http://example.com/in.mp4", "target_codec": "h264",
            "job_size": 10.0, **fields}
    job = rules.new_job(data, tx.jobs.allocate_seq(), now, SETTINGS)
    tx.jobs.put(job)
    return job


def assigned(job: Job, engine_id: str, now: float) -> Job:
    return replace(job, status="assigned", assigned_engine=engine_id, assigned_at=now,
                   updated_at=now, progress_at=now, attempt=job.attempt + 1)


def engine(engine_id: str = "e1", **fields: Any) -> Engine:
    return Engine(engine_id=engine_id, registered_at=0.0, last_heartbeat=0.0, **fields)


def claim(backend: UnitOfWork, engine_id: str, now: float,
          max_active: int = 100) -> Job | None:
    """One unit: claim the next job for the engine and assign it."""
    with backend.transaction() as tx:
        found = tx.engines.get_for_update(engine_id)
        assert found is not None
        job = tx.jobs.claim_next(found, None, now, POLICY, max_active)
        if job is not None:
            tx.jobs.put(assigned(job, engine_id, now))
    return job


def events(backend: UnitOfWork, job_id: str) -> list[tuple[str, int, Any]]:
    with backend.read() as tx:
        return [(kind, attempt, detail) for _, kind, _, attempt, detail
                in tx.jobs.history(job_id)]


# ------------------------------------------------------------------ units


def test_a_committed_unit_is_what_the_next_one_reads(harness: Harness) -> None:
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        job = submit(tx, now)
        tx.engines.put(engine("e1", hostname="h1"))
        assert job == tx.jobs.get(job.job_id)  # a unit reads its own writes
    with backend.read() as tx:
        assert job == tx.jobs.get(job.job_id)
        assert [engine("e1", hostname="h1")] == list(tx.engines.all())
    assert job == backend.peek_job(job.job_id)
    assert backend.peek_job("no-such-job") is None


def test_a_unit_that_raises_leaves_no_trace(harness: Harness) -> None:
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        kept = submit(tx, now)
    with pytest.raises(RuntimeError), backend.transaction() as tx:
        lost = submit(tx, now, callback_url="http://hooks.test/x")
        tx.jobs.put(replace(kept, status="cancelled", completed_at=now, updated_at=now))
        tx.engines.put(engine("e1"))
        tx.idempotency.record("key-1", "hash", lost.job_id, now)
        tx.deliveries.put(Delivery(job_id=kept.job_id, url="http://hooks.test/x",
                                   event="cancelled", payload={}, first_at=now, next_at=now))
        raise RuntimeError("a rule said no")
    with backend.read() as tx:
        assert tx.jobs.get(lost.job_id) is None
        assert kept == tx.jobs.get(kept.job_id)
        assert [] == list(tx.engines.all())
        assert tx.idempotency.claim("key-1", now, 60) is None
        assert tx.deliveries.get(kept.job_id) is None
        assert [] == tx.jobs.history(lost.job_id)
        assert {"pending": 1} == {k: v for k, v in tx.jobs.counts().items() if v}
        # Ids are never handed out twice, even when the unit that took one failed.
        assert tx.jobs.allocate_seq() > lost.seq


def test_a_refused_append_raises_unavailable_and_leaves_no_trace(harness: Harness) -> None:
    backend = harness.open()
    now = harness.now()
    assert harness.faults is not None
    harness.faults.refuse_append = True
    with pytest.raises(errors.Unavailable, match="could not be saved"), \
            backend.transaction() as tx:
        job = submit(tx, now)
    with backend.read() as tx:
        assert tx.jobs.get(job.job_id) is None
        assert 0 == tx.jobs.total()
    harness.faults.refuse_append = False
    with backend.transaction() as tx:
        again = submit(tx, now)
    assert again == backend.peek_job(again.job_id)


def test_a_refused_sync_undoes_the_unit_and_every_later_one(harness: Harness) -> None:
    """Units appended after one the store cannot make durable are undone with it: no
    unit is visible that stands on one that was lost."""
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        tx.engines.put(engine("e1"))
        kept = submit(tx, now)
    assert harness.faults is not None
    gate = threading.Event()
    harness.faults.refuse_durable(gate)
    outcomes: list[BaseException | None] = []

    def unit(action: Any) -> None:
        try:
            with backend.transaction() as tx:
                action(tx)
            outcomes.append(None)
        except errors.Unavailable as exc:
            outcomes.append(exc)

    first = threading.Thread(target=unit, args=(lambda tx: submit(tx, now),))
    first.start()
    second = threading.Thread(target=unit, args=(
        lambda tx: tx.jobs.put(assigned(kept, "e1", now)),))
    second.start()
    deadline = time.monotonic() + 10
    while harness.faults.appended < 3 and time.monotonic() < deadline:
        time.sleep(0.005)  # until both units are appended and waiting
    assert 3 == harness.faults.appended
    gate.set()
    first.join(10)
    second.join(10)
    assert 2 == len(outcomes) and all(isinstance(o, errors.Unavailable) for o in outcomes)
    with backend.read() as tx:
        assert 1 == tx.jobs.total()
        assert kept == tx.jobs.get(kept.job_id)
        assert not tx.jobs.holds_any("e1")


# ------------------------------------------------------------------ jobs


def test_put_records_each_transition_with_the_failure_kind_given(harness: Harness) -> None:
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        job = submit(tx, now)
    kinds = [history.FAILED_ATTEMPT, history.STALLED, history.ENGINE_LOST, None]
    for kind in kinds:
        with backend.transaction() as tx:
            current = tx.jobs.get_for_update(job.job_id)
            assert current is not None
            running = assigned(current, "e1", now)
            tx.jobs.put(running)
        with backend.transaction() as tx:
            # The reason reads like another kind: only ``kind`` decides.
            tx.jobs.put(rules.failed_attempt(running, "engine e1 lost: stalled:", now,
                                             SETTINGS), kind)
    told = [(event, attempt) for event, attempt, _ in events(backend, job.job_id)]
    assert [("submitted", 0),
            ("assigned", 1), ("failed_attempt", 1), ("requeued", 1),
            ("assigned", 2), ("stalled", 2), ("requeued", 2),
            ("assigned", 3), ("engine_lost", 3), ("requeued", 3),
            ("assigned", 4), ("failed_attempt", 4), ("failed", 4)] == told


def test_a_finished_job_with_a_callback_owes_a_delivery(harness: Harness) -> None:
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        job = submit(tx, now, callback_url="http://hooks.test/done")
        plain = submit(tx, now)
    for generation in (1, 2):
        with backend.transaction() as tx:
            current = tx.jobs.get_for_update(job.job_id)
            assert current is not None
            tx.jobs.put(replace(current, status="cancelled", completed_at=now,
                                updated_at=now))
            tx.jobs.put(replace(plain, status="cancelled", completed_at=now, updated_at=now))
        with backend.read() as tx:
            delivery = tx.deliveries.get(job.job_id)
            assert delivery is not None
            assert (generation, "pending", "cancelled", "http://hooks.test/done") == (
                delivery.generation, delivery.state, delivery.event, delivery.url)
            assert [delivery] == tx.deliveries.due(now)
            assert tx.deliveries.get(plain.job_id) is None
        with backend.transaction() as tx:
            current = tx.jobs.get_for_update(job.job_id)
            assert current is not None
            tx.jobs.put(replace(current, status="pending", completed_at=None, updated_at=now))
    with backend.transaction() as tx:
        owed = tx.deliveries.get_for_update(job.job_id)
        assert owed is not None
        tx.deliveries.put(replace(owed, next_at=now + 5))
    with backend.read() as tx:
        assert [] == tx.deliveries.due(now)
        assert 1 == len(tx.deliveries.due(now + 5))
    with backend.transaction() as tx:
        tx.deliveries.put(replace(owed, state="delivered"))
    with backend.read() as tx:
        assert [] == tx.deliveries.due(now + 5)


def test_delete_takes_the_history_and_delivery_with_the_job(harness: Harness) -> None:
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        job = submit(tx, now, callback_url="http://hooks.test/done")
    with backend.transaction() as tx:
        tx.jobs.put(replace(job, status="cancelled", completed_at=now, updated_at=now))
    with backend.transaction() as tx:
        tx.jobs.delete(job.job_id)
    with backend.read() as tx:
        assert tx.jobs.get(job.job_id) is None
        assert [] == tx.jobs.history(job.job_id)
        assert tx.deliveries.get(job.job_id) is None
        assert [] == tx.deliveries.due(now)
        assert 0 == tx.jobs.total()


def test_reserve_room_holds_the_queue_limit(harness: Harness) -> None:
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        assert tx.jobs.reserve_room(2, 3) is None
        submit(tx, now)
        submit(tx, now)
    with backend.transaction() as tx:
        assert 2 == tx.jobs.reserve_room(2, 3)  # refused: how many wait
        assert tx.jobs.reserve_room(1, 3) is None


def test_claim_next_takes_the_best_job_within_the_limit(harness: Harness) -> None:
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        tx.engines.put(engine("e1", supported_codecs=("h264",)))
        tx.engines.put(engine("e2", supported_codecs=("h264",)))
        low = submit(tx, now)
        high = submit(tx, now, priority=5)
        submit(tx, now, target_codec="vp9")
    first = claim(backend, "e1", now)
    second = claim(backend, "e2", now)
    assert first is not None and second is not None
    assert (high.job_id, low.job_id) == (first.job_id, second.job_id)
    assert claim(backend, "e1", now) is None  # the vp9 job suits neither
    with backend.read() as tx:
        assert 2 == tx.jobs.active_count()
        assert (high.job_id,) == tuple(tx.jobs.held_by("e1"))
    with backend.transaction() as tx:
        submit(tx, now)
    assert claim(backend, "e1", now, max_active=2) is None  # the concurrency limit
    assert claim(backend, "e1", now, max_active=3) is not None


def test_claim_next_matches_codec_families(harness: Harness) -> None:
    """Issue #13: a job and an engine match by codec family (``dispatch.domain.codecs``), the
    job keeping the name it was submitted with; a name outside the table only itself."""
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        tx.engines.put(engine("hevc", supported_codecs=("hevc",)))
        tx.engines.put(engine("odd", supported_codecs=("H264X",)))
        x265 = submit(tx, now, target_codec="libx265")
        h265 = submit(tx, now, target_codec="h265")
        odd = submit(tx, now, target_codec="h264x")
    with backend.read() as tx:
        assert 2 == tx.jobs.queue_position(h265, now)  # one queue for the family
        assert 1 == tx.jobs.queue_position(odd, now)
    first, second = claim(backend, "hevc", now), claim(backend, "hevc", now)
    assert first is not None and second is not None
    assert [(x265.job_id, "libx265"), (h265.job_id, "h265")] == [
        (first.job_id, first.target_codec), (second.job_id, second.target_codec)]
    assert claim(backend, "hevc", now) is None
    assert claim(backend, "odd", now) is None  # "h264x" is not "H264X"


def test_racing_claims_never_share_a_job(harness: Harness) -> None:
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        for n in range(8):
            tx.engines.put(engine(f"e{n}"))
        for _ in range(5):
            submit(tx, now)
    got: list[Job | None] = []
    start = threading.Barrier(8)

    def race(engine_id: str) -> None:
        start.wait()
        got.append(claim(backend, engine_id, now, max_active=4))

    threads = [threading.Thread(target=race, args=(f"e{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    claimed = [job.job_id for job in got if job is not None]
    assert 4 == len(claimed) == len(set(claimed))  # the limit holds too
    with backend.read() as tx:
        assert 4 == tx.jobs.active_count()
        assert sorted(claimed) == sorted(job.job_id for job in tx.jobs.held())


def test_the_indexes_reports_read(harness: Harness, clock: FakeClock) -> None:
    backend = harness.open()
    start = harness.now()
    with backend.transaction() as tx:
        tx.engines.put(engine("e1"))
        jobs = [submit(tx, start) for _ in range(4)]
    clock.advance(10)
    now = harness.now()
    with backend.transaction() as tx:
        tx.jobs.put(replace(assigned(jobs[0], "e1", start), status="completed",
                            completed_at=now, updated_at=now))
        tx.jobs.put(replace(jobs[1], status="cancelled", completed_at=start, updated_at=now))
        tx.jobs.put(assigned(jobs[2], "e1", now))
    with backend.read() as tx:
        assert {"pending": 1, "assigned": 1, "processing": 0, "completed": 1,
                "failed": 0, "cancelled": 1} == tx.jobs.counts()
        assert 4 == tx.jobs.total()
        assert jobs[3] == tx.jobs.oldest_pending()
        assert 1 == tx.jobs.queue_position(jobs[3], now)
        page, total = tx.jobs.page(None, 1, 2)
        assert ([jobs[1].job_id, jobs[2].job_id], 4) == ([j.job_id for j in page], total)
        page, total = tx.jobs.page("pending", 0, 10)
        assert ([jobs[3]], 1) == (page, total)
        assert (jobs[2].job_id,) == tuple(tx.jobs.held_by("e1"))
        assert tx.jobs.holds_any("e1") and not tx.jobs.holds_any("e2")
        finished = [j.job_id for j in tx.jobs.finished_before(now + 1, 10)]
        assert [jobs[1].job_id, jobs[0].job_id] == finished  # by when they finished
        assert [jobs[1].job_id] == [j.job_id for j in tx.jobs.finished_before(now, 10)]
        assert [jobs[1].job_id] == [j.job_id for j in tx.jobs.finished_before(now + 1, 1)]
        assert (1, 10.0) == tx.jobs.completion_stats(now - 3600)
        assert (0, 10.0) == tx.jobs.completion_stats(now + 1)


def test_the_dashboards_reads(harness: Harness, clock: FakeClock) -> None:
    backend = harness.open()
    start = harness.now()
    with backend.transaction() as tx:
        tx.engines.put(engine("e1"))
        a = submit(tx, start, target_codec="libx264", priority=5)
        b = submit(tx, start, source_url="http://example.com/Needle.mp4", target_codec="vp9")
        c = submit(tx, start, target_codec="h264")
        d = submit(tx, start, target_codec="h264", priority=5)
    clock.advance(120)
    now = harness.now()
    with backend.transaction() as tx:
        tx.jobs.put(replace(assigned(a, "e1", start), status="completed", completed_at=now,
                            updated_at=now))
        # Failed on e1: the job no longer names its engine, its history does.
        held = assigned(b, "e1", start)
        tx.jobs.put(held)
        tx.jobs.put(replace(held, status="failed", assigned_engine=None,
                            error_message="Engine said NEEDLE", completed_at=now - 61,
                            updated_at=now), history.FAILED_ATTEMPT)
        tx.jobs.put(assigned(c, "e1", now))
    with backend.read() as tx:
        def ids(where: JobFilter, offset: int = 0, limit: int = 10) -> tuple[list[str], int]:
            found, total = tx.jobs.search(where, offset, limit)
            return [job.job_id for job in found], total

        newest_first = [d.job_id, c.job_id, b.job_id, a.job_id]
        assert (newest_first, 4) == ids(JobFilter())
        assert (newest_first[1:3], 4) == ids(JobFilter(), 1, 2)
        assert ([d.job_id], 1) == ids(JobFilter(status="pending"))
        assert ([d.job_id, c.job_id, a.job_id], 3) == ids(JobFilter(codec="h264"))
        assert ([c.job_id], 3) == ids(JobFilter(codec="h264"), 1, 1)
        assert ([b.job_id], 1) == ids(JobFilter(text="needle"))  # source and error
        assert ([a.job_id], 1) == ids(JobFilter(status="completed", engine="e1"))
        assert ([c.job_id, b.job_id, a.job_id], 3) == ids(JobFilter(engine="e1"))
        assert ([], 0) == ids(JobFilter(engine="e2"))
        assert [c.job_id, b.job_id] == [job.job_id for job in tx.jobs.recent_on("e1", 2)]
        assert [] == tx.jobs.recent_on("e2", 5)
        assert {("h264", 5): 1} == tx.jobs.pending_counts()
        minutes = per_minute(tx.jobs.finished_since(now - 3 * 60), now, 3)
        assert {"completed": [0, 0, 1], "failed": [0, 1, 0]} == minutes
        assert [] == tx.jobs.finished_since(now + 3600)


# --------------------------------------------------------- other tables


def test_engines_put_get_delete(harness: Harness) -> None:
    backend = harness.open()
    with backend.transaction() as tx:
        tx.engines.put(engine("e1"))
        tx.engines.put(engine("e2", drain="api"))
    with backend.transaction() as tx:
        tx.engines.delete("e1")
        assert tx.engines.get("e1") is None
    with backend.read() as tx:
        assert [engine("e2", drain="api")] == list(tx.engines.all())
        assert engine("e2", drain="api") == tx.engines.get_for_update("e2")


def test_idempotency_keys_claim_record_expire(harness: Harness, clock: FakeClock) -> None:
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        assert tx.idempotency.claim("k1", now, 60) is None
        tx.idempotency.record("k1", "h1", "job-1", now)
        tx.idempotency.record("k2", "h2", "job-2", now + 1)
    with backend.transaction() as tx:
        assert IdempotencyEntry("h1", "job-1", now) == tx.idempotency.claim(
            "k1", now + 59, 60)
        assert tx.idempotency.claim("k1", now + 60, 60) is None  # too old to count
        assert [] == tx.idempotency.expired(now - 1, 10)
        assert ["k1"] == tx.idempotency.expired(now, 10)
        assert ["k1", "k2"] == tx.idempotency.expired(now + 1, 10)
        assert ["k1"] == tx.idempotency.expired(now + 1, 1)
        tx.idempotency.delete("k1")
    with backend.read() as tx:
        assert ["k2"] == tx.idempotency.expired(now + 1, 10)


# ------------------------------------------------------------------ recovery


def test_a_restart_recovers_every_table(durable_harness: Harness, clock: FakeClock) -> None:
    """What a durable backend committed is there after a crash (from its log) and
    after an orderly stop (from its snapshot), with every index rebuilt."""
    harness = durable_harness
    backend = harness.open()
    now = harness.now()
    with backend.transaction() as tx:
        tx.engines.put(engine("e1", hostname="h1"))
        held = submit(tx, now)
        waiting = submit(tx, now, priority=3)
        done = submit(tx, now, callback_url="http://hooks.test/done")
        tx.idempotency.record("k1", "h1", waiting.job_id, now)
    with backend.transaction() as tx:
        tx.jobs.put(assigned(held, "e1", now))
        # Cancelled mid-encode: the engine's last figures are kept with the job.
        tx.jobs.put(replace(done, status="cancelled", completed_at=now, updated_at=now,
                            progress=40.0, progress_detail={
                                "fps": 24.5, "speed": 1.5, "eta_seconds": None,
                                "updated_at": now}))
    with backend.transaction() as tx:
        running = tx.jobs.get(held.job_id)
        assert running is not None
        tx.jobs.put(rules.failed_attempt(running, "engine overheated", now, SETTINGS),
                    history.STALLED)
    with backend.read() as tx:
        before = (tx.jobs.page(None, 0, 10), list(tx.engines.all()),
                  tx.jobs.counts(), tx.deliveries.due(now),
                  {j: tx.jobs.history(j) for j in (held.job_id, done.job_id)},
                  tx.idempotency.claim("k1", now, 60))
    for snapshot in (False, True):
        backend = harness.restart(snapshot=snapshot)
        with backend.read() as tx:
            after = (tx.jobs.page(None, 0, 10), list(tx.engines.all()),
                     tx.jobs.counts(), tx.deliveries.due(now),
                     {j: tx.jobs.history(j) for j in (held.job_id, done.job_id)},
                     tx.idempotency.claim("k1", now, 60))
            assert before == after
            assert {"fps": 24.5, "speed": 1.5, "eta_seconds": None, "updated_at": now} == \
                tx.jobs.get(done.job_id).progress_detail  # type: ignore[union-attr]
            assert "stalled" == tx.jobs.history(held.job_id)[-2][1]
            assert tx.jobs.allocate_seq() > done.seq  # ids go on, never reused
    clock.advance(3600)  # past the backoff: the pending index was rebuilt
    first = claim(backend, "e1", harness.now())
    assert first is not None and waiting.job_id == first.job_id
    second = claim(backend, "e1", harness.now())
    assert second is not None and held.job_id == second.job_id
