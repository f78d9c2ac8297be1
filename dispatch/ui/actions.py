"""The dashboard's actions: each one a service call the API makes too (same rules,
same history events, same errors), logged with who did it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from dispatch.domain import errors, rules
from dispatch.domain.models import Job
from dispatch.runtime.logs import escape_controls
from dispatch.service import DispatchService
from dispatch.ui.security import Operator

log = logging.getLogger("dispatch.ui")

BULK_MAX = 1000  # jobs one bulk action changes at most; press again for the rest


@dataclass(frozen=True)
class Action:
    name: str
    button: str  # the button's label; the confirmation reads "Yes, <label lower-cased>"
    run: Callable[..., Any]
    applies: Callable[[Job], bool] = lambda job: True


JOB_ACTIONS = {
    "cancel": Action("cancel", "Cancel job",
                     lambda service, job_id: service.commands.cancel_job(job_id),
                     rules.can_cancel),
    "retry": Action("retry", "Retry job",
                    lambda service, job_id: service.commands.retry_job(job_id),
                    rules.can_retry),
}
ENGINE_ACTIONS = {
    "drain": Action("drain", "Drain engine",
                    lambda service, engine_id: service.commands.set_drain(engine_id, True)),
    "resume": Action("resume", "Resume engine",
                     lambda service, engine_id: service.commands.set_drain(engine_id, False)),
    "remove": Action("remove", "Remove engine",
                     lambda service, engine_id: service.commands.delete_engine(engine_id)),
}


def perform(who: Operator, what: str, subject: str, call: Callable[[], Any]) -> str | None:
    """Run one service call; log it with who asked; return the error message (the
    same one the API would answer) or None."""
    try:
        call()
    except errors.DispatchError as exc:
        log.info("dashboard: %s %s by %s refused: %s", what, escape_controls(subject), who,
                 escape_controls(exc.message))
        return exc.message
    log.info("dashboard: %s %s by %s", what, escape_controls(subject), who)
    return None


@dataclass
class BulkResult:
    changed: int = 0
    skipped: int = 0  # matched, but the action does not apply to their status
    failed: list[tuple[str, str]] = field(default_factory=list)  # (job id, message)


def bulk(service: DispatchService, who: Operator, action: Action, jobs: list[Job],
         description: str) -> BulkResult:
    """The action on each job (at most BULK_MAX), through the same per-job service
    call as the API; the jobs it does not apply to are counted, not tried."""
    result = BulkResult()
    for job in jobs[:BULK_MAX]:
        if not action.applies(job):
            result.skipped += 1
            continue
        problem = perform(who, f"bulk {action.name} of job", job.job_id,
                          partial(action.run, service, job.job_id))
        if problem is None:
            result.changed += 1
        else:
            result.failed.append((job.job_id, problem))
    log.info("dashboard: bulk %s of %s by %s: %d changed, %d skipped, %d failed",
             action.name, escape_controls(description), who, result.changed, result.skipped,
             len(result.failed))
    return result
