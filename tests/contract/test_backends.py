"""What the service relies on from a backend, run against every backend the bootstrap
knows (``dispatch.bootstrap.BACKENDS``): a new backend passes these unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dispatch.bootstrap import BACKENDS, Backend
from dispatch.errors import StateError
from dispatch.service import DispatchService
from dispatch.settings import Settings
from tests.conftest import JOB, FakeClock


class Observer:
    def __init__(self) -> None:
        self.syncs: list[float] = []
        self.failures = 0

    def observe_sync(self, seconds: float) -> None:
        self.syncs.append(seconds)

    def observe_failure(self) -> None:
        self.failures += 1


@pytest.fixture(params=BACKENDS, ids=lambda backend: backend.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param


def _open(backend: Backend, settings: Settings, clock: FakeClock,
          observer: Observer | None = None) -> DispatchService:
    return DispatchService(settings, backend.open(settings, observer or Observer()), clock)


def _job(n: int) -> dict[str, Any]:
    return {**JOB, "source_url": f"http://example.com/{n}.mp4"}


def test_every_acknowledged_change_is_there_after_reopening(
        backend: Backend, make_settings: Callable[..., Settings], clock: FakeClock) -> None:
    """Jobs created, changed and deleted before and after a snapshot, an engine and the
    job histories: reopened, the state is exactly as it was, jobs in creation order."""
    settings = make_settings(finished_job_retention=10)
    service = _open(backend, settings, clock)
    first, second, third = (service.submit_job(_job(n)).job_id for n in range(3))
    service.heartbeat({"engine_id": "e1", "supported_codecs": ["h264"]})
    service.cancel_job(second)
    clock.advance(5)
    assert service.snapshot()
    assert not service.snapshot(), "nothing changed since: no second snapshot"
    service.cancel_job(third)
    clock.advance(6)
    assert 1 == service.purge()  # `second` finished 11 s ago
    fourth = service.submit_job(_job(4)).job_id
    before = [(job.job_id, job.status) for job in service.list_jobs(None, 10, 0).jobs]
    events = {job_id: service.job_events(job_id) for job_id in (first, third, fourth)}
    service.store.close()
    # No clock.advance: a restart within the same microsecond (or a clock that stepped
    # back) must still never hand out an id in use.

    reopened = _open(backend, settings, clock)
    try:
        assert [(first, "pending"), (third, "cancelled"), (fourth, "pending")] == before
        assert before == [(job.job_id, job.status)
                          for job in reopened.list_jobs(None, 10, 0).jobs]
        assert events == {job_id: reopened.job_events(job_id) for job_id in events}
        assert "e1" == reopened.get_engine("e1")["engine_id"]
        # New ids continue after the reopened ones.
        assert reopened.submit_job(_job(5)).job_id not in {first, second, third, fourth}
    finally:
        reopened.store.close()


def test_changes_get_consecutive_numbers_and_each_sync_is_observed(
        backend: Backend, make_settings: Callable[..., Settings], clock: FakeClock) -> None:
    """The service undoes changes by their numbers and the metrics count syncs: each
    change gets the next number, is durable once ``wait_durable`` returns, and the
    observer the backend was opened with hears of the sync."""
    observer = Observer()
    store = backend.open(make_settings(), observer)
    try:
        store.recover()
        first = store.append([("idempotency", "k1", {"at": 1.0})])
        second = store.append([("idempotency", "k2", {"at": 2.0})])
        assert second == first + 1
        store.wait_durable(second)
        assert store.durable_seq >= second
        assert store.failure is None and store.check() is None
        assert observer.syncs and observer.failures == 0
    finally:
        store.close()


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.workers == 1],
                         ids=lambda backend: backend.name)
def test_a_backend_for_one_process_refuses_a_second_owner(
        backend: Backend, make_settings: Callable[..., Settings], clock: FakeClock) -> None:
    """A backend that allows one worker holds its state in that process: opening the
    same state again while it is open is refused, naming it, and nothing changes."""
    settings = make_settings()
    service = _open(backend, settings, clock)
    job_id = service.submit_job(_job(1)).job_id
    with pytest.raises(StateError) as raised:
        _open(backend, settings, clock)
    assert settings.state_file in str(raised.value)
    assert [job_id] == [job.job_id for job in service.list_jobs(None, 10, 0).jobs]
    service.store.close()
