"""Prometheus metrics, one registry per app so tests and apps never share counters.

With several gunicorn workers, a scrape is answered by one of them, so each worker
writes its values into files of a shared folder (prometheus_client's multiprocess
mode, ``share_across_processes``) and the answering worker adds them all up.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from dispatch.http.throttle import Throttle
    from dispatch.service import DispatchService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SHARED_FOLDER = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's setting, by its name


def share_across_processes() -> str:
    """From now on, in this process and the workers it forks, metric values live in
    per-process files of a new folder, which any worker's /metrics adds up. Call before
    any metric is made; returns the folder, for the caller to remove at exit."""
    folder = tempfile.mkdtemp(prefix="distconv-metrics-")
    os.environ[SHARED_FOLDER] = folder
    # prometheus_client chooses how values are kept when it is imported, from that
    # variable; it was imported before the settings said how many workers there are.
    values.ValueClass = values.get_value_class()
    return folder


def worker_exited(pid: int) -> None:
    """In the master, for a worker gone: its gauges stop counting (its counters stay,
    being totals of what it did)."""
    if SHARED_FOLDER in os.environ:
        multiprocess.mark_process_dead(pid)


class _StateCollector(Collector):
    """Reads job and engine counts from the service at scrape time."""

    def __init__(self, service: DispatchService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("distconv_jobs", "Jobs by status", labels=["status"])
        for status, count in self._service.queries.counts().items():
            jobs.add_metric([status], count)
        yield jobs
        engines = GaugeMetricFamily("distconv_engines", "Engines by status", labels=["status"])
        for status, count in self._service.queries.engine_counts().items():
            engines.add_metric([status], count)
        yield engines
        age = self._service.queries.oldest_pending_age()
        yield GaugeMetricFamily(
            "distconv_oldest_pending_job_age_seconds",
            "Age of the oldest pending job (0 when none)", value=age,
        )
        yield GaugeMetricFamily(
            "distconv_persistence_healthy",
            "1 while changes can be persisted, 0 otherwise",
            value=0 if self._service.uow.failure else 1,
        )


class _ThrottleCollector(Collector):
    """The throttle's tables, read at scrape time (this process's: each counts alone)."""

    def __init__(self, throttle: Throttle) -> None:
        self._throttle = throttle

    def collect(self) -> Iterator[GaugeMetricFamily]:
        tracked, blocked = self._throttle.sizes()
        yield GaugeMetricFamily("distconv_auth_blocked_addresses",
                                "Client addresses blocked now for failed authentication",
                                value=blocked)
        yield GaugeMetricFamily("distconv_auth_tracked_addresses",
                                "Client addresses with recent failed authentications "
                                "(at most auth_throttle_table_size)", value=tracked)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "distconv_http_requests", "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "distconv_http_request_duration_seconds",
            "HTTP request latency by endpoint and status",
            ["endpoint", "status"], registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.persist_latency = Histogram(
            "distconv_persistence_sync_seconds", "Time to make a batch of changes durable",
            registry=self.registry,
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
        )
        self.persist_failures = Counter(
            "distconv_persistence_failures", "Failed attempts to persist changes",
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "distconv_auth_failures", "Requests and sign-ins with a wrong key",
            registry=self.registry,
        )
        self.auth_refused = Counter(
            "distconv_auth_blocked_requests",
            "Requests and sign-ins refused (429) because their address is blocked",
            registry=self.registry,
        )

        # Label lookups cost as much as the counting; the children are kept per label
        # set (there are only as many as routes x methods x statuses).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._at_scrape: list[Collector] = []  # values computed when scraped

    def observe_request(self, endpoint: str, method: str, status: int,
                        seconds: float) -> None:
        key = (endpoint, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(endpoint, method, str(status)),
                self.latency.labels(endpoint, str(status)),
            )
        children[0].inc()
        children[1].observe(seconds)

    def watch(self, service: DispatchService) -> None:
        collector = _StateCollector(service)
        self.registry.register(collector)
        self._at_scrape.append(collector)

    def watch_throttle(self, throttle: Throttle) -> None:
        collector = _ThrottleCollector(throttle)
        self.registry.register(collector)
        self._at_scrape.append(collector)

    def observe_sync(self, seconds: float) -> None:
        self.persist_latency.observe(seconds)

    def observe_failure(self) -> None:
        self.persist_failures.inc()

    def render(self) -> bytes:
        if SHARED_FOLDER not in os.environ:
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()
        for collector in self._at_scrape:
            every_worker.register(collector)
        multiprocess.MultiProcessCollector(every_worker)
        return generate_latest(every_worker)
