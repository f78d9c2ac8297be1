"""What the service relies on from a backend that keeps its state in the serving
process, run against each such backend the bootstrap knows (``BACKENDS``): a new one
passes these unchanged. The ports' own contract is ``test_backend_contract``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dispatch.bootstrap import JournalBackend
from dispatch.config.settings import Settings
from dispatch.domain.errors import StateError
from dispatch.service import DispatchService, present
from dispatch.service.ports import Backend
from dispatch.storage.journal import JournalStore
from tests.conftest import JOB, FakeClock


class Observer:
    def __init__(self) -> None:
        self.syncs: list[float] = []
        self.failures = 0

    def observe_sync(self, seconds: float) -> None:
        self.syncs.append(seconds)

    def observe_failure(self) -> None:
        self.failures += 1


BACKENDS = [JournalBackend]


@pytest.fixture(params=BACKENDS, ids=lambda backend: backend.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    made: Backend = request.param()
    return made


def _open(backend: Backend, settings: Settings, clock: FakeClock,
          observer: Observer | None = None) -> DispatchService:
    return DispatchService(settings, backend.open(settings, clock, observer or Observer()),
                           clock)


def _job(n: int) -> dict[str, Any]:
    return {**JOB, "source_url": f"http://example.com/{n}.mp4"}


def test_every_acknowledged_change_is_there_after_reopening(
        backend: Backend, make_settings: Callable[..., Settings], clock: FakeClock) -> None:
    """Jobs created, changed and deleted before and after a snapshot, an engine and the
    job histories: reopened, the state is exactly as it was, jobs in creation order."""
    settings = make_settings(finished_job_retention=10)
    service = _open(backend, settings, clock)
    first, second, third = (service.commands.submit_job(_job(n)).job_id for n in range(3))
    service.commands.heartbeat({"engine_id": "e1", "supported_codecs": ["h264"]})
    service.commands.cancel_job(second)
    clock.advance(5)
    assert service.maintenance.snapshot()
    assert not service.maintenance.snapshot(), "nothing changed since: no second snapshot"
    service.commands.cancel_job(third)
    clock.advance(6)
    assert 1 == service.maintenance.purge()  # `second` finished 11 s ago
    fourth = service.commands.submit_job(_job(4)).job_id
    before = [(job.job_id, job.status) for job in service.queries.list_jobs(None, 10, 0).jobs]
    events = {job_id: service.queries.job_events(job_id) for job_id in (first, third, fourth)}
    service.close()
    # No clock.advance: a restart within the same microsecond (or a clock that stepped
    # back) must still never hand out an id in use.

    reopened = _open(backend, settings, clock)
    try:
        assert [(first, "pending"), (third, "cancelled"), (fourth, "pending")] == before
        assert before == [(job.job_id, job.status)
                          for job in reopened.queries.list_jobs(None, 10, 0).jobs]
        assert events == {job_id: reopened.queries.job_events(job_id) for job_id in events}
        assert "e1" == present.engine(reopened.queries.get_engine("e1"))["engine_id"]
        # New ids continue after the reopened ones.
        assert reopened.commands.submit_job(_job(5)).job_id not in {first, second, third, fourth}
    finally:
        reopened.close()


def test_changes_get_consecutive_numbers_and_each_sync_is_observed(
        make_settings: Callable[..., Settings]) -> None:
    """The memory backend undoes changes by their numbers and the metrics count syncs:
    each change the journal takes gets the next number, is durable once
    ``wait_durable`` returns, and the observer it was opened with hears of the sync."""
    observer = Observer()
    store = JournalStore(make_settings().state_file, observer=observer)
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


def test_a_backend_for_one_process_refuses_a_second_owner(
        backend: Backend, make_settings: Callable[..., Settings], clock: FakeClock) -> None:
    """A backend that allows one worker holds its state in that process: opening the
    same state again while it is open is refused, naming it, and nothing changes."""
    settings = make_settings()
    assert 1 == backend.workers(settings)
    service = _open(backend, settings, clock)
    job_id = service.commands.submit_job(_job(1)).job_id
    with pytest.raises(StateError) as raised:
        _open(backend, settings, clock)
    assert settings.state_file in str(raised.value)
    assert [job_id] == [job.job_id for job in service.queries.list_jobs(None, 10, 0).jobs]
    service.close()
