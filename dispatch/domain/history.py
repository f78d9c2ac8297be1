"""Job history: the events a job's changes produce, derived from each transition in
one place (the service's commit), so no code path can forget to record one.

Each event is ``[time, event, engine_id, attempt, detail]``; a job keeps its first
event and its latest ``MAX_EVENTS - 1``. In memory a job's history is one compact
JSON byte string (a few hundred bytes), not a list of objects.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from dispatch.domain.models import ACTIVE_STATUSES, FINISHED_STATUSES, Job, format_time

MAX_EVENTS = 100
MILESTONES = (25.0, 50.0, 75.0)

# Why an attempt ended without the job completing: said by the rule that ends it (an
# engine's own report, the stall check, the liveness sweep), never read from the
# error text, which an engine writes as it likes.
FailureKind = Literal["failed_attempt", "stalled", "engine_lost"]
FAILED_ATTEMPT: FailureKind = "failed_attempt"
STALLED: FailureKind = "stalled"
ENGINE_LOST: FailureKind = "engine_lost"

Event = list[Any]


def transition_events(old: Job | None, new: Job | None, now: float,
                      failure: FailureKind | None = None) -> list[Event]:
    """The events of one job change, oldest first. ``failure`` is the kind of a
    failed attempt (a plain failure when not given)."""
    if new is None:
        return []
    if old is None:
        return [[now, "submitted", None, 0, None]]
    engine, attempt = old.assigned_engine, old.attempt
    if new.status == old.status:
        if new.priority != old.priority:
            return [[now, "priority", engine, attempt, f"{old.priority} -> {new.priority}"]]
        if new.status == "processing" and _milestone(old.progress, new.progress):
            return [[now, "progress", engine, attempt, f"{new.progress:g}%"]]
        return []
    if new.status == "assigned":
        return [[now, "assigned", new.assigned_engine, new.attempt, None]]
    if new.status == "processing":
        events = [[now, "processing", engine, attempt, None]]
        if _milestone(None, new.progress):
            events.append([now, "progress", engine, attempt, f"{new.progress:g}%"])
        return events
    if new.status == "completed":
        return [[now, "completed", engine, attempt, new.output_url]]
    if new.status == "cancelled":
        return [[now, "cancelled", engine, attempt, None]]
    if old.status in ACTIVE_STATUSES and new.retries == old.retries + 1:
        events = [[now, failure or FAILED_ATTEMPT, engine, attempt, new.error_message or ""]]
        if new.status == "pending":
            events.append([now, "requeued", None, attempt,
                           f"retry {new.retries} of {new.max_retries} "
                           f"after {format_time(new.retry_at)}"])
        else:
            events.append([now, "failed", None, attempt, "no retries left"])
        return events
    if old.status in ACTIVE_STATUSES and new.status == "pending":
        return [[now, "released", engine, attempt, "the engine was removed"]]
    if old.status in FINISHED_STATUSES and new.status == "pending":
        return [[now, "retried", None, old.attempt, None]]
    return [[now, new.status, new.assigned_engine, new.attempt, None]]


def _milestone(before: float | None, after: float | None) -> bool:
    if after is None:
        return False
    start = -1.0 if before is None else before
    return any(start < mark <= after for mark in MILESTONES)


def append(history: bytes | None, events: list[Event]) -> list[Event]:
    """The job's history with ``events`` added, bounded."""
    combined = decode(history) + events
    if len(combined) > MAX_EVENTS:
        combined = combined[:1] + combined[-(MAX_EVENTS - 1):]
    return combined


def encode(events: list[Event]) -> bytes:
    return orjson.dumps(events)


def decode(history: bytes | None) -> list[Event]:
    return orjson.loads(history) if history else []


def view(events: list[Event]) -> list[dict[str, Any]]:
    """The API form of a job's history."""
    return [
        {"time": format_time(time), "event": event, "engine_id": engine, "attempt": attempt,
         "detail": detail}
        for time, event, engine, attempt, detail in events
    ]
