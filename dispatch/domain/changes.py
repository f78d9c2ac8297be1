"""What follows from a change to a job, decided once for every backend: the history
events its transition implies and, when it has just finished with a callback URL, the
webhook delivery it owes; when it is deleted, its history and delivery go with it.

Pure: a backend reads what the rule needs (the job before, its history, its previous
delivery), calls ``derive`` and stores what it returns as given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from dispatch.domain import callbacks, history
from dispatch.domain.history import Event, FailureKind
from dispatch.domain.models import FINISHED_STATUSES, Delivery, Job


class Derived(NamedTuple):  # a tuple: made on every job change, so cheap to build
    # The job's whole history after the change; None when the change adds no event.
    history: list[Event] | None = None
    # The delivery to store (a new generation of it); None when none is owed.
    delivery: Delivery | None = None
    # The job is gone: its history and its delivery are removed with it.
    cascade: bool = False


NOTHING = Derived()
DELETED = Derived(cascade=True)


def derive(old: Job | None, new: Job | None, failure: FailureKind | None,
           recorded: bytes | None,
           previous_delivery: Callable[[str], Delivery | None]) -> Derived:
    """What storing ``new`` in place of ``old`` (None: created, or deleted) implies.
    ``recorded`` is the job's history as stored; ``previous_delivery(job_id)`` reads
    the delivery it has, asked only when a new one is owed (for its generation)."""
    if new is None:
        return DELETED
    now = new.updated_at  # the job's own time of this change
    events = history.transition_events(old, new, now, failure)
    finished_now = new.status in FINISHED_STATUSES and (
        old is None or old.status not in FINISHED_STATUSES)
    delivery = None
    if finished_now and new.callback_url:
        delivery = callbacks.new_delivery(new, now, previous_delivery(new.job_id))
    if not events and delivery is None:
        return NOTHING
    return Derived(history.append(recorded, events) if events else None, delivery)
