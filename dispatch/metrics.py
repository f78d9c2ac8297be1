"""Prometheus metrics, one registry per app so tests and apps never share counters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from dispatch.service import DispatchService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StateCollector(Collector):
    """Reads job and engine counts from the service at scrape time."""

    def __init__(self, service: DispatchService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("distconv_jobs", "Jobs by status", labels=["status"])
        for status, count in self._service.counts().items():
            jobs.add_metric([status], count)
        yield jobs
        engines = GaugeMetricFamily("distconv_engines", "Engines by status", labels=["status"])
        for status, count in self._service.engine_counts().items():
            engines.add_metric([status], count)
        yield engines
        age = self._service.oldest_pending_age()
        yield GaugeMetricFamily(
            "distconv_oldest_pending_job_age_seconds",
            "Age of the oldest pending job (0 when none)", value=age,
        )
        yield GaugeMetricFamily(
            "distconv_persistence_healthy",
            "1 while changes can be persisted, 0 otherwise",
            value=0 if self._service.uow.failure else 1,
        )


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

        # Label lookups cost as much as the counting; the children are kept per label
        # set (there are only as many as routes x methods x statuses).
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

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
        self.registry.register(_StateCollector(service))

    def observe_sync(self, seconds: float) -> None:
        self.persist_latency.observe(seconds)

    def observe_failure(self) -> None:
        self.persist_failures.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
