"""Webhook policy: which callback URLs are allowed, when a failed delivery is tried
again, and what a finished job's delivery looks like. Pure functions; the service and
every backend use them (through ``changes``), the sender (``webhooks.py``) only sends."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlsplit

from dispatch.domain.models import Delivery, Job
from dispatch.domain.urls import callback_pattern

BACKOFF_CAP = 300.0


def callback_problem(url: str, allowed_hosts: tuple[str, ...]) -> str | None:
    """Why ``url`` may not be called back, or None when it may."""
    pattern = callback_pattern(allowed_hosts)
    if pattern is None:
        return "callbacks are disabled on this server (no webhook_allowed_hosts)"
    if pattern.fullmatch(url):
        return None
    # Not the published form: say why as precisely as the URL allows.
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http or https URL with a host"
    if parts.username or parts.password:
        return "must not carry credentials"
    host = parts.hostname.lower()
    try:
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "has an invalid port"
    if host not in allowed_hosts and netloc not in allowed_hosts:
        return f"host {host!r} is not in webhook_allowed_hosts"
    return ("must be http(s)://HOST[:PORT][/PATH] with a host in webhook_allowed_hosts, "
            "without whitespace")


def backoff(attempts: int) -> float:
    """Seconds to wait after ``attempts`` failed deliveries: 1, 2, 4 ... at most 5 min."""
    return min(2.0 ** max(0, attempts - 1), BACKOFF_CAP)


def new_delivery(job: Job, now: float, previous: Delivery | None) -> Delivery:
    """The delivery a job that has just finished with a callback URL owes; each
    notification of the same job (a retried job finishes again) has a new generation."""
    assert job.callback_url is not None
    return Delivery(job_id=job.job_id, url=job.callback_url, event=job.status,
                    payload=job.to_dict(), first_at=now, next_at=now,
                    generation=previous.generation + 1 if previous else 1)


def after_attempt(delivery: Delivery, error: str | None, now: float,
                  retry_for: float) -> Delivery:
    """The delivery after one attempt: delivered, tried again later, or given up once
    it has been failing for ``retry_for`` seconds."""
    attempts = delivery.attempts + 1
    if error is None:
        return replace(delivery, attempts=attempts, last_error=None, state="delivered",
                       delivered_at=now)
    if now - delivery.first_at >= retry_for:
        return replace(delivery, attempts=attempts, last_error=error, state="failed")
    return replace(delivery, attempts=attempts, last_error=error,
                   next_at=now + backoff(attempts))
