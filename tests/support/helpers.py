"""Assertions the test modules share."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import TestResponse

Json = dict[str, Any]

# Every time field of jobs and engines.
TIME_KEYS = frozenset({"registered_at", "last_heartbeat", "retry_at", "created_at",
                       "updated_at", "assigned_at", "completed_at"})


def assert_error(response: TestResponse, status: int, code: str) -> Json:
    """The contract's error shape: exactly code and message (no details); JSON.
    Returns the error object."""
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    body = response.get_json()
    error = body["error"]
    assert {"error": {"code": code, "message": error["message"]}} == body
    assert isinstance(error["message"], str) and error["message"]
    return error


def epoch(value: str) -> float:
    """An RFC 3339 UTC time ending in Z, as seconds since the epoch."""
    assert isinstance(value, str) and value.endswith("Z"), value
    return datetime.fromisoformat(value[:-1] + "+00:00").timestamp()


def norm(body: Json) -> Json:
    """The body with its times as epoch seconds, so whole bodies compare whatever the
    precision of their fractions."""
    return {key: (epoch(value) if key in TIME_KEYS and value is not None else value)
            for key, value in body.items()}


def poll(condition: Callable[[], Any], timeout: float, what: str,
         interval: float = 0.05) -> Any:
    """Ask ``condition`` until it answers something truthy and return that; fail
    after ``timeout`` seconds, naming ``what`` and the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last seen: {last!r})")
        time.sleep(interval)


def metric_families(text: str) -> dict[str, Any]:
    """A /metrics page (Prometheus text), its families by name."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def scrape(client: FlaskClient) -> dict[str, Any]:
    """The app's /metrics (200, Prometheus text), its families by name."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return metric_families(response.get_data(as_text=True))


def metric_value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    """The first sample named ``sample_name`` with these labels; 0 when there is none."""
    family_name = re.sub(r"(_total|_count|_sum|_bucket|_created)$", "", sample_name)
    for sample in families[family_name].samples:
        if sample.name == sample_name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
            return float(sample.value)
    return 0.0
