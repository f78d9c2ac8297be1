"""What the database side tells ``/metrics``: the pool's state and how long units take.

The pool gauges are set after every unit (and once when the pool is watched), so that
with several workers each one's pool is counted in the sum any worker's scrape shows
(``dispatch.runtime.metrics``), not only the pool of the worker that answers."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

# psycopg_pool's statistics shown, with what they mean.
POOL_GAUGES = {
    "pool_size": "Connections open or being opened",
    "pool_available": "Connections idle in the pool",
    "requests_waiting": "Requests waiting for a connection",
    "connections_lost": "Connections found broken since start",
}


class DatabaseMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.latency = Histogram(
            "distconv_db_unit_seconds",
            "Time a unit of work holds a database connection, by kind",
            ["kind"], registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )
        # Summed over the workers alive (a dead worker's pool is gone with it).
        self.gauges = {key: Gauge(f"distconv_db_{key}", text, registry=registry,
                                  multiprocess_mode="livesum")
                       for key, text in POOL_GAUGES.items()}
        self._children: dict[str, Any] = {}
        self._pool: Any = None

    def observe(self, kind: str, seconds: float) -> None:
        child = self._children.get(kind)
        if child is None:
            child = self._children[kind] = self.latency.labels(kind)
        child.observe(seconds)
        self._refresh()

    def watch(self, pool: Any) -> None:
        self._pool = pool
        self._refresh()

    def _refresh(self) -> None:
        if self._pool is None:
            return
        stats = self._pool.stats()
        for key, gauge in self.gauges.items():
            gauge.set(stats.get(key, 0))
