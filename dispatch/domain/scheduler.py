"""Which pending job an engine gets. The rules, as the README states them:

1. Eligible: the job's codec is in the family of one the engine asked with
   (``capabilities``) or registered (``supported_codecs``; none listed means any
   codec; families are ``dispatch.domain.codecs``: ``libx264`` is ``h264``), its size fits the
   engine's storage (``job_size`` MB <= ``storage_capacity_gb`` x 1024, when known),
   and its ``retry_at`` has passed.
2. Order: effective priority first, then oldest first. Effective priority is the
   job's ``priority`` plus one point per ``priority_aging_seconds`` it has waited since
   it was submitted, so a low-priority job cannot wait forever behind a stream of
   higher ones (0 turns aging off).
3. Size-aware placement, within the best effective priority only: an engine is *fast*
   when it supports streaming or its benchmark time is at most the median of the
   active engines' benchmarks, *slow* when its benchmark is above that median. A fast
   engine takes the oldest *large* job (``job_size`` >= ``large_job_threshold_mb``)
   among the next few candidates, if there is one; a slow engine passes over a large
   job for a small one, but only while another active fast engine could take it
   (codec and storage) and, with aging on, only while it has waited less than
   ``priority_aging_seconds``.

Index: pending jobs are bucketed by (codec family, priority), each sorted by creation,
so the best job is found among bucket heads without scanning the queue; jobs in
backoff wait in a separate list ordered by ``retry_at`` and join their bucket when due.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from statistics import median

from sortedcontainers import SortedKeyList, SortedList

from dispatch.domain.codecs import families, family
from dispatch.domain.models import Engine, Job

MB_PER_GB = 1024.0
LOOKAHEAD = 32  # candidates examined for size-aware placement beyond the first


def _seq(job: Job) -> int:
    return job.seq


def takes_codec(job: Job, engine: Engine) -> bool:
    """The engine registered the job's codec family (or no codecs: any)."""
    codecs = engine.supported_codecs
    return not codecs or family(job.target_codec) in families(codecs)


def can_run(job: Job, engine: Engine) -> bool:
    """The engine takes the job's codec, and the job fits its storage."""
    return takes_codec(job, engine) and fits(job, engine)


def fits(job: Job, engine: Engine) -> bool:
    """A job fits when its size is within the engine's storage (when the engine said)."""
    capacity = engine.storage_capacity_gb
    return capacity is None or job.job_size <= capacity * MB_PER_GB


@dataclass(frozen=True)
class Policy:
    aging_seconds: float = 600.0
    large_job_mb: float = 1024.0


Buckets = dict[str, dict[int, SortedKeyList]]  # codec family -> priority -> jobs


class PendingIndex:
    """Pending jobs: ready ones by (codec family, priority) in creation order, and
    those in backoff by ``retry_at``. Chunked-encoding tasks have buckets of their
    own per task kind, so an engine that runs no tasks never looks at them; a chunked
    job's parent is counted but never a candidate (no engine is given it)."""

    def __init__(self) -> None:
        self._ready: Buckets = {}
        self._tasks: dict[str, Buckets] = {}  # task kind -> its buckets
        self._parents: dict[str, Job] = {}
        self._waiting = SortedList()  # (retry_at, seq, job)
        self._waiting_ids: dict[str, tuple[float, int, Job]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, job: Job, now: float) -> None:
        self._count += 1
        if job.chunk_seconds is not None:
            self._parents[job.job_id] = job
        elif job.retry_at is not None and job.retry_at > now:
            entry = (job.retry_at, job.seq, job)
            self._waiting.add(entry)
            self._waiting_ids[job.job_id] = entry
        else:
            self._add_ready(job)

    def _buckets(self, job: Job) -> Buckets:
        if job.task is None:
            return self._ready
        return self._tasks.setdefault(job.task["kind"], {})

    def _add_ready(self, job: Job) -> None:
        buckets = self._buckets(job).setdefault(family(job.target_codec), {})
        bucket = buckets.get(job.priority)
        if bucket is None:
            bucket = buckets[job.priority] = SortedKeyList(key=_seq)
        bucket.add(job)

    def remove(self, job: Job) -> None:
        self._count -= 1
        if self._parents.pop(job.job_id, None) is not None:
            return
        entry = self._waiting_ids.pop(job.job_id, None)
        if entry is not None:
            self._waiting.remove(entry)
            return
        codec_family = family(job.target_codec)
        families_of = self._buckets(job)
        buckets = families_of[codec_family]
        bucket = buckets[job.priority]
        bucket.remove(job)
        if not bucket:
            del buckets[job.priority]
            if not buckets:
                del families_of[codec_family]

    def counts(self) -> dict[tuple[str, int], int]:
        """Pending jobs per (codec, priority), those in backoff and chunked jobs'
        parents included, tasks not: from the buckets' sizes, without visiting the
        ready jobs."""
        counts = {(codec, priority): len(bucket) for codec, buckets in self._ready.items()
                  for priority, bucket in buckets.items()}
        waiting = (job for _, _, job in self._waiting if job.task is None)
        for job in (*waiting, *self._parents.values()):
            key = (job.target_codec, job.priority)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def promote(self, now: float) -> None:
        """Move jobs whose backoff has ended into their buckets."""
        while self._waiting and self._waiting[0][0] <= now:
            _, _, job = self._waiting.pop(0)
            del self._waiting_ids[job.job_id]
            self._add_ready(job)

    def position(self, job: Job) -> int:
        """1 + how many ready jobs (or tasks of its kind) of its codec family are
        ahead of it (aging aside)."""
        buckets = self._buckets(job).get(family(job.target_codec), {})
        ahead = sum(len(bucket) for priority, bucket in buckets.items()
                    if priority > job.priority)
        own = buckets.get(job.priority)
        if own is not None:
            ahead += own.bisect_key_left(job.seq)
        return ahead + 1

    def candidates(self, codecs: Iterable[str] | None, now: float,
                   aging_seconds: float, kinds: Iterable[str] = ()) -> Iterator[tuple[float, Job]]:
        """Ready jobs, and tasks of ``kinds``, in the families of the given codecs
        (all when None) with their effective priority, best first."""
        sources = [self._ready, *(self._tasks[k] for k in kinds if k in self._tasks)]
        if codecs is None:
            codec_buckets = [b for source in sources for b in source.values()]
        else:
            wanted = families(codecs)
            codec_buckets = [source[f] for source in sources for f in wanted if f in source]
        streams = [
            _bucket_stream(bucket, now, aging_seconds)
            for buckets in codec_buckets for bucket in buckets.values()
        ]
        if len(streams) == 1:
            return ((-key, job) for key, _, job in streams[0])
        return ((-key, job) for key, _, job in heapq.merge(*streams))


def _bucket_stream(bucket: SortedKeyList, now: float,
                   aging_seconds: float) -> Iterator[tuple[float, int, Job]]:
    # Within one bucket older jobs come first and, having waited longer, also have
    # the higher effective priority: each bucket is already in merge order.
    for job in bucket:
        effective = job.priority
        if aging_seconds > 0:
            effective += max(0.0, now - job.created_at) // aging_seconds
        yield (-effective, job.seq, job)


def engine_speed(engine: Engine, active: Iterable[Engine]) -> str:
    """``fast``, ``slow`` or ``unknown`` relative to the engines active now."""
    if engine.streaming_support:
        return "fast"
    own = engine.avg_benchmark_time if engine.avg_benchmark_time is not None \
        else engine.benchmark_time
    if own is None:
        return "unknown"
    times = [
        e.avg_benchmark_time if e.avg_benchmark_time is not None else e.benchmark_time
        for e in active
    ]
    known = [t for t in times if t is not None]
    if not known:
        return "unknown"
    return "fast" if own <= median(known) else "slow"


def choose_job(
    index: PendingIndex,
    engine: Engine,
    capabilities: Iterable[str] | None,
    now: float,
    policy: Policy,
    speed: str = "unknown",
    fast_can_take: Callable[[Job], bool] = lambda job: False,
) -> Job | None:
    """The job ``engine`` should get now, or None when nothing suits it.

    ``fast_can_take(job)`` tells whether another active fast engine could take the job;
    only then does a slow engine leave a large job for it."""
    index.promote(now)
    codecs = list(capabilities) if capabilities is not None else list(engine.supported_codecs)
    first: Job | None = None
    best_priority = 0.0
    looked = 0
    for effective, job in index.candidates(codecs or None, now, policy.aging_seconds,
                                            engine.task_kinds):
        if not fits(job, engine):
            continue
        if first is None:
            first, best_priority = job, effective
            if speed == "unknown":
                return job
        elif effective < best_priority or looked >= LOOKAHEAD:
            break
        looked += 1
        large = job.job_size >= policy.large_job_mb
        if speed == "fast" and large:
            return job
        if speed == "slow":
            if not large:
                return job
            waited = now - job.created_at
            if (policy.aging_seconds > 0 and waited >= policy.aging_seconds) \
                    or not fast_can_take(job):
                return job
    if speed == "fast":
        return first
    # A slow engine: every candidate of the best priority is a large job that an
    # active fast engine can take.
    return None


def pick_job(index: PendingIndex, engine: Engine, engines: Iterable[Engine],
             capabilities: Iterable[str] | None, now: float, policy: Policy) -> Job | None:
    """``choose_job`` with the engine's speed judged against the live engines (those
    online and not draining), the others' ability to take a large job included."""
    live = [e for e in engines if not e.offline and e.drain is None]
    speed = engine_speed(engine, live)
    fast = [e for e in live if e is not engine and engine_speed(e, live) == "fast"] \
        if speed == "slow" else []

    def fast_can_take(job: Job) -> bool:
        return any(can_run(job, e) for e in fast)

    return choose_job(index, engine, capabilities, now, policy, speed, fast_can_take)
