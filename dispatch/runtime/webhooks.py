"""Signed webhooks: the server POSTs a job's JSON to its ``callback_url`` when the job
is completed, failed or cancelled.

Headers (receivers verify both, and reject a timestamp more than 5 minutes old)::

    X-DistConv-Timestamp: 1704067200                 (Unix seconds)
    X-DistConv-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body, key = secret>
    X-DistConv-Delivery:  <job_id>.<notification>.<attempt>  (a retried job notifies again)

Only hosts listed in ``webhook_allowed_hosts`` may be called back, redirects are not
followed, and delivery runs on its own threads with timeouts: a slow or dead receiver
never holds up the API. Failed deliveries are retried with exponential backoff (1 s,
2 s, 4 s ... at most 5 min apart) for ``webhook_retry_for`` seconds; pending deliveries
are part of the durable state and resume after a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import orjson

from dispatch.config.settings import Settings
from dispatch.domain.models import Delivery

log = logging.getLogger("dispatch.webhooks")

USER_AGENT = "distconv-dispatch-webhook"


class Outbox(Protocol):
    """What the sender needs from the service: the due deliveries, and a place to
    note each attempt's outcome (``maintenance.Maintenance`` is one)."""

    def due_deliveries(self) -> list[Delivery]: ...

    def record_delivery(self, job_id: str, generation: int, error: str | None) -> None: ...


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could lead the server to a host nobody allowed.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> str | None:
    """POST once; None on a 2xx answer, else what went wrong."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
    try:
        with _opener.open(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except (OSError, ValueError) as exc:
        return f"{exc.__class__.__name__}: {getattr(exc, 'reason', exc)}"
    return None if 200 <= status < 300 else f"HTTP {status}"


class Sender(threading.Thread):
    """Delivers due webhooks on a few threads of its own."""

    def __init__(self, outbox: Outbox, settings: Settings, clock: Callable[[], float],
                 interval: float = 0.5, workers: int = 4) -> None:
        super().__init__(name="webhooks", daemon=True)
        self.outbox = outbox
        self.settings = settings
        self.clock = clock
        self.interval = interval
        self.stopped = threading.Event()
        self.wake = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook")
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("webhook round failed")
            self.wake.wait(self.interval)
            self.wake.clear()

    def run_once(self, wait: bool = False) -> int:
        """Start every due delivery not already under way; return how many."""
        due = self.outbox.due_deliveries()
        futures = []
        for delivery in due:
            with self._lock:
                if delivery.job_id in self._in_flight:
                    continue
                self._in_flight.add(delivery.job_id)
            futures.append(self._pool.submit(self._deliver, delivery))
        if wait:
            for future in futures:
                future.result()
        return len(futures)

    def _deliver(self, delivery: Delivery) -> None:
        settings = self.settings
        try:
            body = orjson.dumps(delivery.payload)
            timestamp = int(self.clock())
            attempt = delivery.attempts + 1
            headers = {
                "X-DistConv-Timestamp": str(timestamp),
                "X-DistConv-Signature": signature(settings.webhook_secret or "", timestamp,
                                                  body),
                "X-DistConv-Delivery": f"{delivery.job_id}.{delivery.generation}"
                                       f".{attempt}",
            }
            error = post(delivery.url, body, headers, settings.webhook_timeout)
            self.outbox.record_delivery(delivery.job_id, delivery.generation, error)
        finally:
            with self._lock:
                self._in_flight.discard(delivery.job_id)

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
