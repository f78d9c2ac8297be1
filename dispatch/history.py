"""Job history: the events a job's changes produce, derived from each transition in
one place (the service's commit), so no code path can forget to record one.

Each event is ``[time, event, engine_id, attempt, detail]``; a job keeps its first
event and its latest ``MAX_EVENTS - 1``. In memory a job's history is one compact
JSON byte string (a few hundred bytes), not a list of objects.
"""

from __future__ import annotations

from typing import Any

import orjson

from dispatch.models import ACTIVE_STATUSES, FINISHED_STATUSES, Job, format_time

MAX_EVENTS = 100
MILESTONES = (25.0, 50.0, 75.0)
ENGINE_LOST_PREFIX = "engine "
STALLED_PREFIX = "stalled:"

Event = list[Any]


def transition_events(old: Job | None, new: Job | None, now: float) -> list[Event]:
    """The events of one job change, oldest first."""
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
        reason = new.error_message or ""
        kind = ("stalled" if reason.startswith(STALLED_PREFIX)
                else "engine_lost" if reason.startswith(ENGINE_LOST_PREFIX)
                else "failed_attempt")
        events = [[now, kind, engine, attempt, reason]]
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
    existing: list[Event] = orjson.loads(history) if history else []
    combined = existing + events
    if len(combined) > MAX_EVENTS:
        combined = combined[:1] + combined[-(MAX_EVENTS - 1):]
    return combined


def encode(events: list[Event]) -> bytes:
    return orjson.dumps(events)


def view(history: bytes | None) -> list[dict[str, Any]]:
    """The API form of a job's history."""
    if not history:
        return []
    return [
        {"time": format_time(time), "event": event, "engine_id": engine, "attempt": attempt,
         "detail": detail}
        for time, event, engine, attempt, detail in orjson.loads(history)
    ]
