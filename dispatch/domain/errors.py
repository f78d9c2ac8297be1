"""Domain exceptions raised by the service layer.

The service knows no HTTP; ``dispatch.http.errors`` maps each class to the contract's
error shape in one place::

    DispatchError                 (code, HTTP status)
    ├── NotFound                  not_found, 404
    │   ├── JobNotFound
    │   └── EngineNotFound
    ├── Invalid                   validation_error, 400 (a rule the schema cannot see)
    ├── Conflict                  conflict, 409
    │   ├── InvalidTransition     the job's status does not allow the request
    │   ├── NotJobHolder          the reporting engine does not hold the job
    │   └── StaleAttempt          the report is from an earlier attempt
    ├── QueueFull                 queue_full, 503 (+ Retry-After)
    └── Unavailable               unavailable, 503: the change could not be persisted
"""

from __future__ import annotations

from typing import Any


class DispatchError(Exception):
    code = "internal_error"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DispatchError):
    code = "not_found"
    status = 404


class JobNotFound(NotFound):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")


class EngineNotFound(NotFound):
    def __init__(self, engine_id: str) -> None:
        super().__init__(f"engine {engine_id!r} not found")


class Invalid(DispatchError):
    code = "validation_error"
    status = 400

    def __init__(self, details: dict[str, Any]) -> None:
        names = ", ".join(sorted(str(name) for name in details))
        super().__init__(f"invalid request: check {names}")
        self.details = details


class Conflict(DispatchError):
    code = "conflict"
    status = 409


class InvalidTransition(Conflict):
    pass


class NotJobHolder(Conflict):
    pass


class StaleAttempt(Conflict):
    pass


class QueueFull(DispatchError):
    code = "queue_full"
    status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(DispatchError):
    code = "unavailable"
    status = 503


class StateError(Exception):
    """The state on disk cannot be used; the server must not start (exit 1)."""


class PersistenceError(Exception):
    """The store could not make a change durable (raised by the store, not the service)."""
