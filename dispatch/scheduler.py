"""Which pending job an engine gets.

Pending jobs are indexed by codec, each codec's jobs kept sorted by (priority
descending, creation ascending), so choosing a job reads the heads of the engine's
codecs instead of scanning the queue. The rules are in the README ("Scheduling").
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from sortedcontainers import SortedList

from dispatch.models import Engine, Job

MB_PER_GB = 1024.0

_Entry = tuple[int, int, str]  # (-priority, seq, job_id)


def _entry(job: Job) -> _Entry:
    return (-job.priority, job.seq, job.job_id)


def fits(job: Job, engine: Engine) -> bool:
    """A job fits when its size is within the engine's storage (when the engine said)."""
    capacity = engine.storage_capacity_gb
    return capacity is None or job.job_size <= capacity * MB_PER_GB


class PendingIndex:
    """Pending jobs by codec, in the order they are served."""

    def __init__(self) -> None:
        self._by_codec: dict[str, SortedList] = {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_codec.values())

    def add(self, job: Job) -> None:
        entries = self._by_codec.get(job.target_codec)
        if entries is None:
            entries = self._by_codec[job.target_codec] = SortedList()
        entries.add(_entry(job))

    def remove(self, job: Job) -> None:
        entries = self._by_codec[job.target_codec]
        entries.remove(_entry(job))
        if not entries:
            del self._by_codec[job.target_codec]

    def codecs(self) -> Iterable[str]:
        return self._by_codec.keys()

    def in_order(self, codecs: Iterable[str] | None) -> Iterator[str]:
        """Job ids of the given codecs (all when None), best first."""
        if codecs is None:
            lists = list(self._by_codec.values())
        else:
            lists = [self._by_codec[c] for c in set(codecs) if c in self._by_codec]
        if len(lists) == 1:
            return (entry[2] for entry in lists[0])
        return (entry[2] for entry in heapq.merge(*lists))


def choose_job(
    index: PendingIndex,
    jobs: dict[str, Job],
    engine: Engine,
    capabilities: Iterable[str] | None,
    now: float,
) -> Job | None:
    """The best pending job for ``engine``, or None when nothing suits it."""
    codecs = list(capabilities) if capabilities is not None else list(engine.supported_codecs)
    for job_id in index.in_order(codecs or None):
        job = jobs[job_id]
        if job.retry_at is not None and job.retry_at > now:
            continue
        if fits(job, engine):
            return job
    return None
