"""What the database side tells ``/metrics``: the pool's state and how long units take."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# psycopg_pool's statistics shown, with what they mean.
POOL_GAUGES = {
    "pool_size": "Connections open or being opened",
    "pool_available": "Connections idle in the pool",
    "requests_waiting": "Requests waiting for a connection",
}


class _PoolCollector(Collector):
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.pool.stats()
        for key, text in POOL_GAUGES.items():
            yield GaugeMetricFamily(f"distconv_db_{key}", text, value=stats.get(key, 0))
        yield GaugeMetricFamily("distconv_db_connections_lost",
                                "Connections found broken since start",
                                value=stats.get("connections_lost", 0))


class DatabaseMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.latency = Histogram(
            "distconv_db_unit_seconds",
            "Time a unit of work holds a database connection, by kind",
            ["kind"], registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )
        self._children: dict[str, Any] = {}

    def observe(self, kind: str, seconds: float) -> None:
        child = self._children.get(kind)
        if child is None:
            child = self._children[kind] = self.latency.labels(kind)
        child.observe(seconds)

    def watch(self, pool: Any) -> None:
        self.registry.register(_PoolCollector(pool))
