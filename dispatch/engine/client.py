"""The engine's side of the server API, with the retry rules of an engine that must
never give up on a result: an unreachable server or a 5xx is retried with capped
exponential backoff and jitter; a 4xx is an answer."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import requests

from dispatch import __version__

log = logging.getLogger("dispatch.engine")

TIMEOUT = (5.0, 15.0)  # connect, read: the server answers in milliseconds
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0


class Stopped(Exception):
    """Retrying was abandoned: the engine is shutting down."""


def backoff(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): "full jitter",
    uniform in [delay/2, delay] with delay = min(cap, base * 2^(attempt-1)), so engines
    cut off together do not come back in step."""
    delay = min(cap, base * 2 ** min(attempt - 1, 30))
    return random.uniform(delay / 2, delay)


class Answer:
    """A response the server gave: status and JSON body (None when empty)."""

    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        try:
            self.body: Any = response.json() if response.content else None
        except ValueError:
            self.body = None

    @property
    def message(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("message", ""))
        return f"HTTP {self.status}"


class ServerClient:
    """One client per thread (a requests.Session is not shared between threads)."""

    def __init__(self, server: str, api_key: str, engine_id: str) -> None:
        self.server = server
        self.engine_id = engine_id
        self.session = requests.Session()
        self.session.headers.update({"X-API-Key": api_key,
                                     "User-Agent": f"dispatch-engine/{__version__}"})

    def once(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout: float | tuple[float, float] = TIMEOUT) -> Answer | None:
        """One request; None when the server could not be reached, answered 5xx, or
        refused this address for now (429)."""
        try:
            response = self.session.request(method, self.server + path, json=body,
                                            timeout=timeout)
        except requests.RequestException as exc:
            log.debug("%s %s: %s", method, path, exc)
            return None
        if response.status_code >= 500:
            log.debug("%s %s: HTTP %d", method, path, response.status_code)
            return None
        if response.status_code == 429:
            # This address is blocked for wrong keys (another client behind it?): not
            # an answer about the job; it comes once the block lifts.
            log.warning("%s %s: refused for now (%s); retrying", method, path,
                        Answer(response).message)
            return None
        return Answer(response)

    def until_answered(self, method: str, path: str, body: dict[str, Any] | None,
                       stop: threading.Event | None = None,
                       give_up: Callable[[], bool] | None = None) -> Answer:
        """Retry until the server answers (any status below 500). Waits are cut
        short by ``stop``; ``give_up`` returning true raises :class:`Stopped`."""
        attempt = 0
        while True:
            answer = self.once(method, path, body)
            if answer is not None:
                if attempt:
                    log.info("server reachable again (%s %s)", method, path)
                return answer
            attempt += 1
            if give_up is not None and give_up():
                raise Stopped(f"{method} {path} abandoned")
            if attempt == 1:
                log.warning("server unreachable (%s %s); retrying", method, path)
            waiter = stop if stop is not None else threading.Event()
            waiter.wait(backoff(attempt))

    # ------------------------------------------------------------ API calls

    def heartbeat(self, payload: dict[str, Any], timeout: float) -> Answer | None:
        return self.once("POST", "/engines/heartbeat",
                         {"engine_id": self.engine_id, **payload}, timeout=timeout)

    def report(self, job_id: str, kind: str, body: dict[str, Any],
               give_up: Callable[[], bool] | None = None,
               stop: threading.Event | None = None) -> Answer:
        """``progress``, ``complete`` or ``fail``, retried until answered."""
        return self.until_answered("POST", f"/jobs/{job_id}/{kind}",
                                   {"engine_id": self.engine_id, **body}, stop, give_up)
