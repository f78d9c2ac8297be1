"""The API forms of what the service returns, made in this one place: the JSON the
contract documents (``schemas``) for jobs, engines, heartbeats and histories. The
dashboard shows the same forms."""

from __future__ import annotations

from typing import Any

from dispatch.domain import history
from dispatch.domain.history import Event
from dispatch.domain.models import Delivery, format_time
from dispatch.service.reports import Beat, EngineState, JobState


def job(state: JobState) -> dict[str, Any]:
    """A job's fields with RFC 3339 times, why it waits (pending jobs) and the state of
    its webhook (jobs with a callback URL)."""
    body = state.job.to_dict()
    body["waiting_reason"] = state.waiting_reason
    body["webhook"] = None if state.delivery is None else delivery(state.delivery)
    return body


def delivery(owed: Delivery) -> dict[str, Any]:
    return {
        "url": owed.url,
        "state": owed.state,
        "attempts": owed.attempts,
        "next_attempt_at": format_time(owed.next_at) if owed.state == "pending" else None,
        "last_error": owed.last_error,
        "delivered_at": format_time(owed.delivered_at),
    }


def engine(state: EngineState) -> dict[str, Any]:
    """An engine's record plus what the server derives."""
    record = state.engine.to_record()
    del record["benchmark_count"]
    del record["drain"]
    record["current_jobs"] = list(state.current_jobs)
    record["status"] = state.status
    return record


def beat(answer: Beat) -> dict[str, Any]:
    body = engine(answer.state)
    body["cancelled_jobs"] = answer.cancelled_jobs
    body["draining"] = answer.state.engine.drain is not None
    return body


def events(recorded: list[Event]) -> list[dict[str, Any]]:
    return history.view(recorded)
