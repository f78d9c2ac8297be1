"""The service's rules through the ports, on every backend: no Flask, a fake clock.
What a caller of the service sees: the jobs and engines it returns, the errors it
raises, and that a refused request changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dispatch.config.settings import Settings
from dispatch.domain import errors
from dispatch.domain.models import to_micros
from dispatch.service import DispatchService, present
from tests.conftest import API_KEY, JOB, FakeClock
from tests.support.backends import Harness

MakeService = Callable[..., DispatchService]


def job(n: int = 0, **fields: Any) -> dict[str, Any]:
    return {**JOB, "source_url": f"http://example.com/{n}.mp4", **fields}


def running(service: DispatchService, engine_id: str = "e1", **data: Any) -> str:
    """A job submitted and assigned to ``engine_id``; its id."""
    service.commands.heartbeat({"engine_id": engine_id})
    submitted = service.commands.submit_job(job(**data))
    assigned = service.commands.assign_job(engine_id, None).job
    assert assigned is not None and submitted.job_id == assigned.job_id
    return assigned.job_id


def kinds(service: DispatchService, job_id: str) -> list[str]:
    return [event["event"] for event in present.events(service.queries.job_events(job_id))]


# ------------------------------------------------------------ submission


def test_a_full_queue_refuses_and_changes_nothing(make_service: MakeService) -> None:
    service = make_service(job_queue_max_size=2)
    service.commands.submit_job(job(1))
    with pytest.raises(errors.QueueFull) as refused:
        service.commands.submit_batch([job(2), job(3)])
    assert "holds 1 pending jobs and takes at most 2" in refused.value.message
    assert 1 == service.queries.list_jobs(None, 10, 0).total
    service.commands.submit_job(job(4))
    with pytest.raises(errors.QueueFull):
        service.commands.submit_job(job(5))


def test_an_idempotency_key_returns_the_first_job(make_service: MakeService,
                                                  clock: FakeClock) -> None:
    service = make_service(idempotency_ttl=60)
    first, created = service.commands.submit_once(job(1), "key-1")
    again, created_again = service.commands.submit_once(job(1), "key-1")
    assert (True, False, first) == (created, created_again, again)
    with pytest.raises(errors.Conflict, match="different request body"):
        service.commands.submit_once(job(2), "key-1")
    clock.advance(60)  # the key has expired: the same body is a new job
    later, created_later = service.commands.submit_once(job(1), "key-1")
    assert created_later and later.job_id != first.job_id
    assert 2 == service.queries.list_jobs(None, 10, 0).total


def test_expired_keys_are_forgotten(make_service: MakeService, clock: FakeClock) -> None:
    service = make_service(idempotency_ttl=60)
    service.commands.submit_once(job(1), "old")
    clock.advance(30)
    service.commands.submit_once(job(2), "young")
    clock.advance(31)
    assert 1 == service.maintenance.expire_idempotency_keys()
    assert 0 == service.maintenance.expire_idempotency_keys()


def test_a_callback_to_a_host_not_allowed_is_invalid(make_service: MakeService) -> None:
    service = make_service(webhook_allowed_hosts=("hooks.test",))
    with pytest.raises(errors.Invalid) as refused:
        service.commands.submit_batch([job(1), job(2, callback_url="http://evil.test/x")])
    assert {1: {"callback_url": ["host 'evil.test' is not in webhook_allowed_hosts"]}} \
        == refused.value.details["jobs"]
    assert 0 == service.queries.list_jobs(None, 10, 0).total


# ------------------------------------------------------------ reports


def test_reports_from_anyone_but_the_holder_are_refused(make_service: MakeService) -> None:
    service = make_service()
    job_id = running(service, "e1")
    service.commands.heartbeat({"engine_id": "e2"})
    with pytest.raises(errors.NotJobHolder):
        service.commands.report_progress(job_id, 50.0, engine_id="e2")
    with pytest.raises(errors.StaleAttempt):
        service.commands.complete_job(job_id, "http://example.com/out.mp4", engine_id="e1",
                                      attempt=2)
    service.commands.complete_job(job_id, "http://example.com/out.mp4", engine_id="e1", attempt=1)
    with pytest.raises(errors.InvalidTransition, match="it is completed"):
        service.commands.fail_job(job_id, "late", engine_id="e1")
    assert "completed" == service.queries.get_job(job_id).status
    assert 1 == present.engine(service.queries.get_engine("e1"))["jobs_completed"]


def test_a_failed_attempt_backs_off_then_fails_for_good(make_service: MakeService,
                                                        clock: FakeClock) -> None:
    service = make_service(retry_backoff_seconds=5, retry_backoff_max_seconds=8,
                           max_job_retries=2)
    job_id = running(service, "e1")
    delays = []
    for attempt in (1, 2):
        failed = service.commands.fail_job(job_id, "encoder crashed", engine_id="e1")
        assert "pending" == failed.status and failed.retry_at is not None
        delays.append(failed.retry_at - to_micros(clock()))
        assert service.commands.assign_job("e1", None).job is None  # still in backoff
        clock.advance(delays[-1])
        assert attempt + 1 == service.commands.assign_job("e1", None).job.attempt  # type: ignore[union-attr]
    assert [5.0, 8.0] == delays  # doubling, capped
    final = service.commands.fail_job(job_id, "encoder crashed", engine_id="e1")
    assert ("failed", None) == (final.status, final.retry_at)
    assert 3 == present.engine(service.queries.get_engine("e1"))["jobs_failed"]
    assert kinds(service, job_id)[-2:] == ["failed_attempt", "failed"]


# ------------------------------------------------------------ assignment


def test_assignment_respects_drain_limit_and_redelivery(make_service: MakeService) -> None:
    service = make_service(max_concurrent_jobs=1)
    held = running(service, "e1")
    service.commands.submit_job(job(2))
    service.commands.heartbeat({"engine_id": "e2"})
    assert service.commands.assign_job("e2", None).job is None  # one job runs: the limit
    again = service.commands.assign_job("e1", None)  # a restarted engine asks again
    assert (held, True) == (again.job.job_id, again.redelivered)  # type: ignore[union-attr]
    service.commands.complete_job(held, "http://example.com/out.mp4")
    service.commands.set_drain("e2", True)
    assert service.commands.assign_job("e2", None).job is None
    service.commands.set_drain("e2", False)
    assert service.commands.assign_job("e2", None).job is not None
    with pytest.raises(errors.EngineNotFound):
        service.commands.assign_job("e9", None)


def test_removing_an_engine_returns_its_jobs(make_service: MakeService) -> None:
    service = make_service()
    job_id = running(service, "e1")
    service.commands.delete_engine("e1")
    assert ("pending", None) == (service.queries.get_job(job_id).status,
                                 service.queries.get_job(job_id).assigned_engine)
    assert kinds(service, job_id)[-1] == "released"
    assert [] == service.queries.list_engines()


def test_a_new_priority_moves_a_pending_job_and_is_recorded(make_service: MakeService) -> None:
    service = make_service()
    first = service.commands.submit_job(job(1))
    second = service.commands.submit_job(job(2))
    changed = service.commands.set_priority(second.job_id, 7)
    assert (7, 7) == (changed.priority, service.queries.get_job(second.job_id).priority)
    assert service.commands.set_priority(second.job_id, 7) == changed  # no change, no event
    assert ["submitted", "priority"] == kinds(service, second.job_id)
    assert "0 -> 7" == present.events(service.queries.job_events(second.job_id))[-1]["detail"]
    service.commands.heartbeat({"engine_id": "e1"})
    assigned = service.commands.assign_job("e1", None).job
    assert assigned is not None and second.job_id == assigned.job_id  # ahead of the first
    service.commands.cancel_job(first.job_id)
    with pytest.raises(errors.InvalidTransition, match="already cancelled"):
        service.commands.set_priority(first.job_id, 5)
    assert 0 == service.queries.get_job(first.job_id).priority
    with pytest.raises(errors.JobNotFound):
        service.commands.set_priority("no-such-job", 5)


# ------------------------------------------------------------ maintenance


def test_the_sweep_says_which_kind_of_failure_it_was(make_service: MakeService,
                                                     clock: FakeClock) -> None:
    service = make_service(engine_heartbeat_timeout=10, job_stall_timeout=30)
    lost = running(service, "e1")
    stuck = running(service, "e2")
    for _ in range(4):  # e2 stays alive, e1 falls silent
        clock.advance(8)
        service.commands.heartbeat({"engine_id": "e2"})
    assert 2 == service.maintenance.sweep()  # e1 lost (and its job), e2's job stalled
    assert "offline" == present.engine(service.queries.get_engine("e1"))["status"]
    assert ["engine_lost", "requeued"] == kinds(service, lost)[-2:]
    assert ["stalled", "requeued"] == kinds(service, stuck)[-2:]
    assert 0 == service.maintenance.sweep()


def test_an_engine_silent_before_a_restart_gets_a_full_timeout(
        durable_harness: Harness, clock: FakeClock) -> None:
    settings = Settings(api_key=API_KEY, engine_heartbeat_timeout=10)
    backend = durable_harness.open()
    service = DispatchService(settings, backend, clock)
    service.commands.heartbeat({"engine_id": "e1"})
    clock.advance(60)  # the server was down longer than the timeout
    backend = durable_harness.restart()
    restarted = DispatchService(settings, backend, clock)
    assert 0 == restarted.maintenance.sweep()
    clock.advance(11)
    assert 1 == restarted.maintenance.sweep()


def test_a_failed_delivery_is_retried_with_backoff_then_given_up(
        make_service: MakeService, clock: FakeClock) -> None:
    service = make_service(webhook_allowed_hosts=("hooks.test",), webhook_retry_for=5)
    submitted = service.commands.submit_job(job(callback_url="http://hooks.test/done"))
    service.commands.cancel_job(submitted.job_id)
    (due,) = service.maintenance.due_deliveries()
    stale = due.generation + 1
    service.maintenance.record_delivery(submitted.job_id, stale, "HTTP 500")
    service.maintenance.record_delivery(submitted.job_id, due.generation, "HTTP 500")
    assert [] == service.maintenance.due_deliveries()
    clock.advance(1)  # backoff(1) = 1 s
    (again,) = service.maintenance.due_deliveries()
    assert 1 == again.attempts
    clock.advance(5)
    service.maintenance.record_delivery(submitted.job_id, again.generation, "HTTP 500")
    job_state = service.queries.describe(service.queries.get_job(submitted.job_id))
    webhook = present.job(job_state)["webhook"]
    assert ("failed", 2, "HTTP 500") == (webhook["state"], webhook["attempts"],
                                         webhook["last_error"])
    assert [] == service.maintenance.due_deliveries()


def test_finished_jobs_are_purged_after_the_retention(make_service: MakeService,
                                                      clock: FakeClock) -> None:
    service = make_service(finished_job_retention=100)
    old = service.commands.submit_job(job(1))
    service.commands.cancel_job(old.job_id)
    clock.advance(50)
    young = service.commands.submit_job(job(2))
    service.commands.cancel_job(young.job_id)
    clock.advance(51)
    assert 1 == service.maintenance.purge(batch=1)
    with pytest.raises(errors.JobNotFound):
        service.queries.get_job(old.job_id)
    assert [young.job_id] == [j.job_id for j in service.queries.list_jobs(None, 10, 0).jobs]


def test_a_refused_change_is_unavailable_and_changes_nothing(
        make_service: MakeService, harness: Harness) -> None:
    service = make_service()
    job_id = running(service, "e1")
    assert harness.faults is not None
    harness.faults.refuse_append = True
    with pytest.raises(errors.Unavailable):
        service.commands.complete_job(job_id, "http://example.com/out.mp4")
    with pytest.raises(errors.Unavailable):
        service.commands.submit_job(job(2))
    assert "assigned" == service.queries.get_job(job_id).status
    assert 0 == present.engine(service.queries.get_engine("e1"))["jobs_completed"]
    assert {"pending": 0, "assigned": 1} == {
        k: v for k, v in service.queries.counts().items() if k in ("pending", "assigned")}
