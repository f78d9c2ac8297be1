"""Property tests of the scheduling rules (contract §4, ``dispatch/domain/scheduler.py``) on
DispatchService itself, with a MemoryStore and a fake clock.

Hypothesis draws a farm (engines with random codecs, storage, speed), settings, and a
sequence of operations: submissions of random codec, priority and size, heartbeats
(some announcing a drain or listing jobs), assignments, progress, completions and
failures (some naming an old attempt or an engine that does not hold the job), cancels,
retries, operator drains, clock jumps and liveness sweeps. A model checks every answer
and, after every step, the invariants:

- a job is held by at most one engine, and an engine holds at most one job;
- the limits hold: never more active jobs than max_concurrent_jobs, and a submission
  (or retry) is refused exactly when the pending jobs reach job_queue_max_size;
- each assignment is the job the documented rules pick: eligibility (codec, storage,
  retry_at), effective priority with aging, oldest first, size-aware placement;
- a report naming an old attempt, or an engine that does not hold the job, changes
  nothing; an accepted one applies the retry rule with the settings' backoff;
- a sweep fails exactly the jobs of silent engines and the stalled jobs.

The second test ends each sequence with every engine asking for work while time
passes, and checks that every job some engine can take is eventually assigned.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from statistics import median
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dispatch.config.settings import Settings
from dispatch.domain import errors
from dispatch.domain.models import ACTIVE_STATUSES, FINISHED_STATUSES, Job, parse_time
from dispatch.service import DispatchService, present
from tests.conftest import API_KEY, FakeClock

CODECS = ("h264", "vp9", "av1")
SIZES = (1.0, 300.0, 1023.0, 1024.0, 3000.0)  # MB; large from 1024 MB (the default)
ENGINES = ("e0", "e1", "e2", "e3")
MB_PER_GB = 1024.0

engine_specs = st.fixed_dictionaries({
    "supported_codecs": st.lists(st.sampled_from(CODECS), unique=True, max_size=2),
    "storage_capacity_gb": st.none() | st.sampled_from([0.5, 1.0, 4.0]),
    "streaming_support": st.booleans(),
    "benchmark_time": st.none() | st.sampled_from([5.0, 20.0, 60.0]),
})

job_specs = st.fixed_dictionaries({
    "codec": st.sampled_from(CODECS),
    "priority": st.integers(-2, 2),
    "size": st.sampled_from(SIZES),
    "max_retries": st.none() | st.integers(0, 2),
})

farms = st.fixed_dictionaries({
    "config": st.fixed_dictionaries({
        "max_concurrent_jobs": st.integers(1, 4),
        "job_queue_max_size": st.integers(1, 8),
        "engine_heartbeat_timeout": st.sampled_from([60.0, 200.0]),
        "retry_backoff_seconds": st.sampled_from([0.0, 5.0, 40.0]),
        "retry_backoff_max_seconds": st.sampled_from([10.0, 100.0]),
        "auto_retry_failed_jobs": st.booleans(),
        "max_job_retries": st.integers(0, 2),
        "priority_aging_seconds": st.sampled_from([0.0, 50.0, 600.0]),
        "job_stall_timeout": st.sampled_from([0.0, 100.0]),
    }),
    "specs": st.lists(engine_specs, min_size=len(ENGINES), max_size=len(ENGINES)),
    "registered": st.integers(0, len(ENGINES)),
    "initial_jobs": st.lists(job_specs, max_size=8),
})


def op(name: str, **arguments: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One step: the Farm method to call and its arguments."""
    return st.tuples(st.just(name), st.fixed_dictionaries(arguments))


engine_ids = st.sampled_from(ENGINES)
indexes = st.integers(0, 10**6)
submit_op = st.tuples(st.just("submit"), job_specs)
heartbeat_op = op("heartbeat", engine_id=engine_ids,
                  status=st.sampled_from([None, "idle", "idle", "busy", "draining"]),
                  queue=st.none() | st.lists(indexes, max_size=3))
ask_op = op("ask", engine_id=engine_ids, status=st.sampled_from([None, "idle"]))
report_op = op("report", action=st.sampled_from(["progress", "complete", "fail"]),
               index=indexes, active_only=st.sampled_from([True, True, True, False]),
               who=st.sampled_from(["none", "holder", "other"]),
               attempt_offset=st.sampled_from([None, 0, 0, -1, 1]),
               percent=st.sampled_from([0.0, 10.0, 10.0, 50.0]))
advance_op = op("advance", seconds=st.sampled_from([1, 5, 10, 30, 30, 61, 150, 700]))
sweep_op = op("sweep")
# Repeated entries weigh the draw: engines ask and report far more often than an
# operator cancels, retries or drains.
operations = st.one_of(
    submit_op, submit_op, heartbeat_op, heartbeat_op, ask_op, ask_op, ask_op,
    op("assign", engine_id=engine_ids,
       capabilities=st.lists(st.sampled_from(CODECS), unique=True, max_size=2)),
    report_op, report_op, report_op, advance_op, advance_op, sweep_op, sweep_op,
    op("cancel", index=indexes), op("retry", index=indexes),
    op("operator_drain", engine_id=engine_ids, draining=st.booleans()),
)
steps = st.lists(operations, min_size=20, max_size=60)


def speed_of(view: dict[str, Any], live: list[dict[str, Any]]) -> str:
    """The docstring's speed class: fast when streaming or benchmark <= median of the
    active engines' benchmarks, slow above it, unknown without a benchmark."""
    if view["streaming_support"]:
        return "fast"
    own = _benchmark(view)
    known = [b for b in (_benchmark(e) for e in live) if b is not None]
    if own is None or not known:
        return "unknown"
    return "fast" if own <= median(known) else "slow"


def _benchmark(view: dict[str, Any]) -> float | None:
    avg = view["avg_benchmark_time"]
    return avg if avg is not None else view["benchmark_time"]


class Farm:
    """One service on a fake clock, and the model that checks its every answer."""

    def __init__(self, config: dict[str, Any], specs: list[dict[str, Any]],
                 registered: int, initial_jobs: list[dict[str, Any]]) -> None:
        self.clock = FakeClock()
        self.settings = Settings(api_key=API_KEY, state_file="unused.json", **config)
        self.service = DispatchService(self.settings, clock=self.clock)
        self.specs = dict(zip(ENGINES, specs, strict=True))
        self.job_ids: list[str] = []
        self.assignments: Counter[str] = Counter()  # job id -> times newly assigned
        self.drain: dict[str, str | None] = {}  # the model of each engine's drain
        self.local_queue: dict[str, list[str]] = {}
        for engine_id in ENGINES[:registered]:
            self.heartbeat(engine_id, None, None)
        for job in initial_jobs:
            self.submit(**job)

    def run(self, sequence: list[tuple[str, dict[str, Any]]]) -> None:
        self.check()
        for name, arguments in sequence:
            getattr(self, name)(**arguments)
            self.check()

    def jobs(self) -> dict[str, Job]:
        return {job.job_id: job for job in self.service.queries.list_jobs(None, 10**6, 0).jobs}

    def engines(self) -> dict[str, dict[str, Any]]:
        views = map(present.engine, self.service.queries.list_engines())
        return {view["engine_id"]: view for view in views}

    def now(self) -> float:
        return self.clock()

    def pick_job(self, index: int, active_only: bool = False) -> Job | None:
        jobs = self.jobs()
        ids = [job_id for job_id in self.job_ids
               if not active_only or jobs[job_id].status in ACTIVE_STATUSES]
        return jobs[ids[index % len(ids)]] if ids else None

    def effective(self, job: Job, now: float) -> float:
        aging = self.settings.priority_aging_seconds
        if aging <= 0:
            return job.priority
        return job.priority + max(0.0, now - job.created_at) // aging

    def requeued(self, job: Job, reason: str, now: float) -> dict[str, Any]:
        """What a failed attempt makes of ``job`` (the retry rule with the backoff)."""
        retries = job.retries + 1
        base = dict(retries=retries, error_message=reason, assigned_engine=None,
                    progress=None, progress_at=None, updated_at=now)
        if self.settings.auto_retry_failed_jobs and retries <= job.max_retries:
            delay = min(self.settings.retry_backoff_seconds * 2 ** (retries - 1),
                        self.settings.retry_backoff_max_seconds)
            return {**base, "status": "pending", "retry_at": now + delay}
        return {**base, "status": "failed", "retry_at": None, "completed_at": now}

    def assert_became(self, before: Job, after: Job, changes: dict[str, Any]) -> None:
        """``after`` is ``before`` with exactly ``changes`` (every field compared)."""
        assert replace(before, **changes) == after

    def expected_choice(self, engine_id: str, capabilities: list[str] | None,
                        jobs: dict[str, Job], views: dict[str, dict[str, Any]],
                        now: float) -> Job | None:
        """The job the scheduler's documented rules give ``engine_id`` now."""
        spec = self.specs[engine_id]
        codecs = capabilities if capabilities is not None else spec["supported_codecs"]
        capacity = spec["storage_capacity_gb"]
        eligible = [
            job for job in jobs.values()
            if job.status == "pending"
            and (not codecs or job.target_codec in codecs)
            and (capacity is None or job.job_size <= capacity * MB_PER_GB)
            and (job.retry_at is None or job.retry_at <= now)
        ]
        if not eligible:
            return None
        best = max(self.effective(job, now) for job in eligible)
        top = sorted((job for job in eligible if self.effective(job, now) == best),
                     key=lambda job: job.seq)
        live = [v for v in views.values() if v["status"] not in ("offline", "draining")]
        speed = speed_of(views[engine_id], live)
        large_mb = self.settings.large_job_threshold_mb
        if speed == "unknown":
            return top[0]
        if speed == "fast":
            return next((job for job in top if job.job_size >= large_mb), top[0])
        # A slow engine leaves a large job only to another active fast engine that
        # could take it (codec and storage).
        fast = [v for v in live
                if v["engine_id"] != engine_id and speed_of(v, live) == "fast"]

        def fast_can_take(job: Job) -> bool:
            return any(
                (not v["supported_codecs"] or job.target_codec in v["supported_codecs"])
                and (v["storage_capacity_gb"] is None
                     or job.job_size <= v["storage_capacity_gb"] * MB_PER_GB)
                for v in fast
            )

        aging = self.settings.priority_aging_seconds
        for job in top:
            if job.job_size < large_mb or not fast_can_take(job) or (
                    aging > 0 and now - job.created_at >= aging):
                return job
        return None

    # ------------------------------------------------------- operations

    def submit(self, codec: str, priority: int, size: float, max_retries: int | None) -> None:
        pending = sum(1 for job in self.jobs().values() if job.status == "pending")
        data: dict[str, Any] = {"source_url": "http://example.com/in.mp4",
                                "target_codec": codec, "job_size": size,
                                "priority": priority}
        if max_retries is not None:
            data["max_retries"] = max_retries
        try:
            job = self.service.commands.submit_job(data)
        except errors.QueueFull:
            assert pending >= self.settings.job_queue_max_size
            return
        assert pending < self.settings.job_queue_max_size
        expected_retries = self.settings.max_job_retries if max_retries is None else max_retries
        assert ("pending", 0, expected_retries, None) == (
            job.status, job.attempt, job.max_retries, job.assigned_engine)
        self.job_ids.append(job.job_id)

    def heartbeat(self, engine_id: str, status: str | None, queue: list[int] | None) -> None:
        data: dict[str, Any] = {"engine_id": engine_id, **self.specs[engine_id]}
        data = {k: v for k, v in data.items() if v is not None}
        if status is not None:
            data["status"] = status
        if queue is not None and self.job_ids:
            data["local_job_queue"] = [self.job_ids[i % len(self.job_ids)] for i in queue]
        answer = present.beat(self.service.commands.heartbeat(data))

        drain = self.drain.get(engine_id)
        if status == "draining" and drain is None:
            drain = "engine"
        elif status in ("idle", "busy") and drain == "engine":
            drain = None
        self.drain[engine_id] = drain
        if "local_job_queue" in data:
            self.local_queue[engine_id] = data["local_job_queue"]
        jobs = self.jobs()
        withdrawn = [
            job_id for job_id in self.local_queue.get(engine_id, [])
            if jobs.get(job_id) is not None and (
                jobs[job_id].status == "cancelled"
                or (jobs[job_id].status not in FINISHED_STATUSES
                    and jobs[job_id].assigned_engine != engine_id))
        ]
        assert withdrawn == answer["cancelled_jobs"]
        assert (drain is not None) == answer["draining"]
        assert answer["status"] != "offline"

    def assign(self, engine_id: str, capabilities: list[str] | None) -> None:
        jobs, views, now = self.jobs(), self.engines(), self.now()
        if engine_id not in views:
            try:
                self.service.commands.assign_job(engine_id, capabilities)
            except errors.EngineNotFound:
                return
            raise AssertionError("assign for an unknown engine must be 404")
        result = self.service.commands.assign_job(engine_id, capabilities)
        view = views[engine_id]
        if view["current_jobs"]:
            assert result.redelivered and result.job is not None
            assert view["current_jobs"] == [result.job.job_id]
            assert jobs[result.job.job_id] == result.job
            assert jobs == self.jobs()
            return
        active = sum(1 for job in jobs.values() if job.status in ACTIVE_STATUSES)
        if view["status"] in ("offline", "draining") \
                or active >= self.settings.max_concurrent_jobs:
            expected = None
        else:
            expected = self.expected_choice(engine_id, capabilities, jobs, views, now)
        got = result.job
        assert (None if expected is None else expected.job_id) == (
            None if got is None else got.job_id)
        if got is None or expected is None:
            assert jobs == self.jobs()
            return
        assert not result.redelivered
        self.assignments[got.job_id] += 1
        self.assert_became(expected, got, dict(
            status="assigned", assigned_engine=engine_id, assigned_at=now, updated_at=now,
            progress=None, progress_at=now, retry_at=None, attempt=expected.attempt + 1))

    def ask(self, engine_id: str, status: str | None) -> None:
        """A running engine: a heartbeat, then a request for work."""
        self.heartbeat(engine_id, status, None)
        self.assign(engine_id, None)

    def report(self, action: str, index: int, active_only: bool, who: str,
               attempt_offset: int | None, percent: float) -> None:
        job = self.pick_job(index, active_only)
        if job is None:
            return
        holder = job.assigned_engine
        engine_id = {"none": None, "holder": holder,
                     "other": next(e for e in ENGINES if e != holder)}[who]
        attempt = None if attempt_offset is None else job.attempt + attempt_offset
        if attempt is not None and attempt < 1:
            attempt = None
        jobs_before, views_before, now = self.jobs(), self.engines(), self.now()
        call = {
            "progress": lambda: self.service.commands.report_progress(
                job.job_id, percent, engine_id, attempt),
            "complete": lambda: self.service.commands.complete_job(job.job_id, "http://out/x.mp4",
                                                          engine_id, attempt),
            "fail": lambda: self.service.commands.fail_job(job.job_id, "boom", engine_id, attempt),
        }[action]
        refused = (
            (attempt is not None and attempt != job.attempt)
            or job.status not in ACTIVE_STATUSES
            or (engine_id is not None and engine_id != holder)
        )
        if refused:
            try:
                call()
            except errors.Conflict:
                pass
            else:
                raise AssertionError(f"{action} with attempt {attempt} by {engine_id} on "
                                     f"{job} must be a conflict")
            # A refused report, e.g. from an old attempt, changes nothing.
            assert jobs_before == self.jobs()
            assert views_before == self.engines()
            return
        after = call()
        if action == "progress":
            changes: dict[str, Any] = dict(status="processing", progress=percent,
                                           updated_at=now)
            if percent != job.progress:
                changes["progress_at"] = now
        elif action == "complete":
            changes = dict(status="completed", output_url="http://out/x.mp4", progress=100.0,
                           completed_at=now, updated_at=now, retry_at=None)
        else:
            changes = self.requeued(job, "boom", now)
        self.assert_became(job, after, changes)
        assert after == self.service.queries.get_job(job.job_id)

    def cancel(self, index: int) -> None:
        job = self.pick_job(index)
        if job is None:
            return
        now = self.now()
        if job.status in FINISHED_STATUSES:
            try:
                self.service.commands.cancel_job(job.job_id)
            except errors.InvalidTransition:
                return
            raise AssertionError("cancelling a finished job must be a conflict")
        after = self.service.commands.cancel_job(job.job_id)
        self.assert_became(job, after, dict(status="cancelled", completed_at=now,
                                            updated_at=now, retry_at=None))

    def retry(self, index: int) -> None:
        job = self.pick_job(index)
        if job is None:
            return
        pending = sum(1 for j in self.jobs().values() if j.status == "pending")
        try:
            after = self.service.commands.retry_job(job.job_id)
        except errors.InvalidTransition:
            assert job.status not in ("failed", "cancelled")
            return
        except errors.QueueFull:
            assert job.status in ("failed", "cancelled")
            assert pending >= self.settings.job_queue_max_size
            return
        assert job.status in ("failed", "cancelled")
        assert pending < self.settings.job_queue_max_size
        assert ("pending", 0, None, None) == (after.status, after.retries, after.retry_at,
                                              after.assigned_engine)

    def operator_drain(self, engine_id: str, draining: bool) -> None:
        if engine_id not in self.engines():
            return
        view = present.engine(self.service.commands.set_drain(engine_id, draining))
        self.drain[engine_id] = "api" if draining else None
        if view["status"] != "offline":
            assert (view["status"] == "draining") == draining

    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    def sweep(self) -> None:
        jobs, views, now = self.jobs(), self.engines(), self.now()
        timeout = self.settings.engine_heartbeat_timeout
        started = self.service.started_at
        lost = {
            engine_id for engine_id, view in views.items()
            if view["status"] != "offline"
            and max(parse_time(view["last_heartbeat"]) or 0.0, started) + timeout < now
        }
        stall = self.settings.job_stall_timeout
        expected: dict[str, dict[str, Any]] = {}
        for job in jobs.values():
            if job.status not in ACTIVE_STATUSES:
                continue
            if job.assigned_engine in lost:
                expected[job.job_id] = self.requeued(
                    job, f"engine {job.assigned_engine} lost (no heartbeat for {timeout:g} s)",
                    now)
            elif stall > 0:
                since = job.progress_at if job.progress_at is not None else job.assigned_at
                if since is not None and now - since > stall:
                    expected[job.job_id] = self.requeued(
                        job, f"stalled: no progress for {stall:g} s on engine "
                        f"{job.assigned_engine}", now)
        self.service.maintenance.sweep()
        after_jobs, after_views = self.jobs(), self.engines()
        for job_id, job in jobs.items():
            if job_id in expected:
                self.assert_became(job, after_jobs[job_id], expected[job_id])
            else:
                assert job == after_jobs[job_id]
        for engine_id, view in views.items():
            went_offline = after_views[engine_id]["status"] == "offline"
            assert (view["status"] == "offline" or engine_id in lost) == went_offline

    # ------------------------------------------------------- invariants

    def check(self) -> None:
        """The invariants: one holder per job, one job per engine, the engine status the
        server shows, the concurrency limit, attempts counted, pending jobs free."""
        jobs, views = self.jobs(), self.engines()
        held_by: dict[str, str] = {}
        for engine_id, view in views.items():
            assert len(view["current_jobs"]) <= 1, view
            for job_id in view["current_jobs"]:
                assert job_id not in held_by, f"{job_id} held by {held_by[job_id]} and " \
                    f"{engine_id}"
                held_by[job_id] = engine_id
            if view["status"] == "offline":
                assert [] == view["current_jobs"]
            expected_status = "offline" if view["status"] == "offline" else (
                "draining" if self.drain.get(engine_id) is not None else
                "busy" if view["current_jobs"] else "idle")
            assert expected_status == view["status"]
        active = {job_id: job for job_id, job in jobs.items() if job.status in ACTIVE_STATUSES}
        assert {job_id: job.assigned_engine for job_id, job in active.items()} == held_by
        assert len(active) <= self.settings.max_concurrent_jobs
        for job in jobs.values():
            assert self.assignments[job.job_id] == job.attempt
            if job.status == "pending":
                assert (None, None) == (job.assigned_engine, job.progress)

    def keep_asking(self) -> None:
        """Every engine heartbeats, asks and completes what it gets, round after round
        while time passes; then no job that some engine can take may still wait."""
        views = self.engines()
        for engine_id in views:
            self.service.commands.set_drain(engine_id, False)
            self.drain[engine_id] = None
        step = 20.0
        rounds = (len(self.job_ids) + 5
                  + int(self.settings.priority_aging_seconds / step)
                  + int(self.settings.retry_backoff_max_seconds / step))
        for _ in range(rounds):
            for engine_id in views:
                self.heartbeat(engine_id, "idle", None)
            for engine_id in views:
                result = self.service.commands.assign_job(engine_id, None)
                if result.job is not None:
                    self.assignments[result.job.job_id] += int(not result.redelivered)
                    self.service.commands.complete_job(result.job.job_id, "http://out/x.mp4",
                                              engine_id, result.job.attempt)
            self.check()
            self.clock.advance(step)
        takeable = {
            job_id: job for job_id, job in self.jobs().items()
            if job.status == "pending" and any(
                (not self.specs[e]["supported_codecs"]
                 or job.target_codec in self.specs[e]["supported_codecs"])
                and (self.specs[e]["storage_capacity_gb"] is None
                     or job.job_size <= self.specs[e]["storage_capacity_gb"] * MB_PER_GB)
                for e in views)
        }
        assert {} == takeable, (
            f"jobs left waiting although an engine that can take them kept asking: "
            f"{takeable}; engines {self.specs}; settings {self.settings}")


PROPERTIES = settings(max_examples=150, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])


@PROPERTIES
@given(farm=farms, sequence=steps)
def test_scheduler_rules_hold_after_every_step(
    farm: dict[str, Any], sequence: list[tuple[str, dict[str, Any]]]
) -> None:
    """Random operations on a random farm: every answer is the one the rules give, and
    the invariants (one holder per job, limits, old attempts inert) hold throughout."""
    Farm(**farm).run(sequence)


# A slow engine (benchmark 20 s against the median 12.5 s) is the only one that can take
# a large job, while a fast engine (5 s) with too little storage is active: "passes
# over large jobs ... only while a fast engine is active to take them" says the slow
# engine takes it; with aging off nothing else ever lets it through.
STARVED_LARGE_JOB = {
    "config": {"max_concurrent_jobs": 2, "job_queue_max_size": 4,
               "engine_heartbeat_timeout": 60.0, "retry_backoff_seconds": 5.0,
               "retry_backoff_max_seconds": 10.0, "auto_retry_failed_jobs": True,
               "max_job_retries": 1, "priority_aging_seconds": 0.0,
               "job_stall_timeout": 0.0},
    "specs": [
        {"supported_codecs": [], "storage_capacity_gb": 0.5, "streaming_support": False,
         "benchmark_time": 5.0},
        {"supported_codecs": [], "storage_capacity_gb": None, "streaming_support": False,
         "benchmark_time": 20.0},
        {"supported_codecs": [], "storage_capacity_gb": None, "streaming_support": False,
         "benchmark_time": None},
        {"supported_codecs": [], "storage_capacity_gb": None, "streaming_support": False,
         "benchmark_time": None},
    ],
    "registered": 2,
    "initial_jobs": [{"codec": "h264", "priority": 0, "size": 1024.0, "max_retries": None}],
}


@settings(PROPERTIES, max_examples=100)
@given(farm=farms, sequence=steps)
@example(farm=STARVED_LARGE_JOB, sequence=[("ask", {"engine_id": "e1", "status": None})])
def test_every_takeable_job_is_eventually_assigned(
    farm: dict[str, Any], sequence: list[tuple[str, dict[str, Any]]]
) -> None:
    """After random operations, engines that keep asking (and finishing what they get)
    are eventually given every pending job one of them can take: no job waits forever,
    whatever its priority, size or backoff."""
    model = Farm(**farm)
    model.run(sequence)
    model.keep_asking()
