"""What only a shared database needs: webhook deliveries claimed by the instance that
sends them, so that two instances never send the same one."""

from __future__ import annotations

from dataclasses import replace

from dispatch.config.settings import Settings
from dispatch.domain import rules
from dispatch.domain.models import to_micros
from dispatch.storage.postgres.backend import PostgresBackend
from dispatch.storage.postgres.pool import Pool, conninfo
from dispatch.storage.postgres.records import DELIVERY_CLAIM_SECONDS
from tests.conftest import FakeClock
from tests.support.postgres import PostgresServer

SETTINGS = Settings(api_key="backend-key-0123456789", webhook_allowed_hosts=("hooks.test",))
JOB = {"source_url": "http://example.com/in.mp4", "target_codec": "h264", "job_size": 1.0,
       "callback_url": "http://hooks.test/done"}


def instance(server: PostgresServer, clock: FakeClock, name: str) -> PostgresBackend:
    return PostgresBackend(Pool(conninfo(server.url), 4), lambda: to_micros(clock()),
                           instance=name)


def test_each_due_delivery_goes_to_one_instance_until_its_claim_runs_out(
        postgres: PostgresServer, clock: FakeClock) -> None:
    postgres.reset()
    a, b = instance(postgres, clock, "a"), instance(postgres, clock, "b")
    try:
        now = to_micros(clock())
        with a.transaction() as tx:
            for _ in range(6):
                job = rules.new_job(JOB, tx.jobs.allocate_seq(), now, SETTINGS)
                tx.jobs.put(replace(job, status="cancelled", completed_at=now))
        with a.read() as tx:
            first = {d.job_id for d in tx.deliveries.due(now)}
        with b.read() as tx:
            assert [] == tx.deliveries.due(now)  # all six are a's
        with a.read() as tx:  # a sees its own claims again (it may still be sending)
            assert first == {d.job_id for d in tx.deliveries.due(now)}
        assert 6 == len(first)
        # a records one attempt: the delivery is nobody's until it is due again.
        done = sorted(first)[0]
        with a.transaction() as tx:
            owed = tx.deliveries.get_for_update(done)
            assert owed is not None
            tx.deliveries.put(replace(owed, attempts=1, next_at=now + 2))
        later = now + 3
        with b.read() as tx:
            assert [done] == [d.job_id for d in tx.deliveries.due(later)]
        # a died: its claims run out, and b sends the rest.
        with b.read() as tx:
            taken = {d.job_id for d in tx.deliveries.due(now + DELIVERY_CLAIM_SECONDS)}
        assert first == taken
    finally:
        a.close()
        b.close()


def test_queue_positions_count_ready_jobs_ahead_however_long_the_bucket(
        postgres: PostgresServer, clock: FakeClock) -> None:
    """A position is 1 + the ready jobs of the codec ahead: higher priorities, then
    those of its own priority created before it (jobs in backoff do not count); in a
    long bucket it comes from the counts rather than a scan."""
    postgres.reset()
    backend = instance(postgres, clock, "a")
    plain = {**JOB, "callback_url": None}
    try:
        now = to_micros(clock())
        with backend.transaction() as tx:
            bucket = []
            for n in range(2600):
                job = rules.new_job(plain, tx.jobs.allocate_seq(), now, SETTINGS)
                if n % 100 == 7:  # 26 in backoff, spread over the bucket
                    job = replace(job, retry_at=now + 60)
                tx.jobs.put(job)
                bucket.append(job)
            for _ in range(10):
                tx.jobs.put(rules.new_job({**plain, "priority": 1}, tx.jobs.allocate_seq(),
                                          now, SETTINGS))
            for _ in range(5):
                tx.jobs.put(rules.new_job({**plain, "target_codec": "vp9", "priority": 5},
                                          tx.jobs.allocate_seq(), now, SETTINGS))
        backend.snapshot()  # folds the count deltas
        with backend.read() as tx:
            for index in (0, 8, 150, 1999, 2001, 2300, 2599):
                job = bucket[index]
                ahead = sum(1 for other in bucket[:index] if other.retry_at is None)
                assert 1 + 10 + ahead == tx.jobs.queue_position(job, now), index
            # Once the backoff is over, those jobs are in line again.
            assert 1 + 10 + 2300 == tx.jobs.queue_position(bucket[2300], now + 60)
    finally:
        backend.close()
