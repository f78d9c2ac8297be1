"""Soak test (issue #7 item 5): mixed load for a while against a real ``dispatch-server``
on loopback, with engines joining, dying (they stop heartbeating) and rejoining under
a short engine timeout; then consistency checks and a memory verdict.

    .venv/bin/python -m bench.soak --minutes 10

The server: the ``dispatch-server`` console script, durable journal in a temporary
folder, engine timeout 4 s, finished jobs purged after 60 s (so the stored set reaches
a steady state and worker RSS should stay flat), snapshots every 30 s as shipped.

Load: submitters (rate-limited, pending capped), cancels and retries, readers (lists,
single jobs, /stats, /metrics, /health), and a pool of engines that heartbeat, take
jobs, report progress, complete or fail them, sometimes die for longer than the
timeout while holding a job (the server must re-queue it and, when the engine comes
back announcing it, withdraw it), sometimes pause for less, and sometimes leave for good
while new ones join.

Afterwards:
1. live: with every engine gone silent, no job may stay assigned/processing, each job
   is listed under exactly one status, and /stats counts match the listings;
2. a graceful stop (exit 0), a restart on the same files without retention (a frozen
   state), and the full check again: every job listed once, in one status, with the
   fields that status requires; /stats = listings; nothing we never submitted; every
   job we saw completed or cancelled still so (or purged); the unfinished jobs equal
   those seen live before the restart;
3. worker RSS at 2 min (or 20 % of a shorter run) vs at the end of the load.
Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import run  # state files and server processes

CODECS = ("h264", "h265", "vp9", "av1")
FINISHED = ("completed", "failed", "cancelled")
ENGINE_TIMEOUT = 4.0
RETENTION = 60.0


class Client:
    """One keep-alive connection to the server; reconnects once on a dropped one."""

    def __init__(self, port: int, api_key: str) -> None:
        self.port = port
        self.headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=self.headers)
                response = self.conn.getresponse()
                raw = response.read()
                break
            except (http.client.HTTPException, ConnectionError, TimeoutError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 2:
                    raise
        payload: Any = None
        if raw:
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
        return response.status, payload

    def close(self) -> None:
        self.conn.close()


class Tally:
    """Shared counters and what the load has seen, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.submitted: set[str] = set()
        self.completed: set[str] = set()
        self.cancelled: set[str] = set()
        self.retried: set[str] = set()
        self.failed_seen: list[str] = []
        self.engine_events: Counter[str] = Counter()

    def count(self, what: str, status: int) -> None:
        with self.lock:
            self.calls[f"{what} {status}"] += 1
            if status >= 500:
                self.unexpected.append(f"{what} answered {status}")

    def problem(self, text: str) -> None:
        with self.lock:
            if len(self.unexpected) < 200:
                self.unexpected.append(text)


# ------------------------------------------------------------------ the load

def submitter(port: int, key: str, tally: Tally, stop: threading.Event, rate: float,
              pending_cap: int, seed: int) -> None:
    rng = random.Random(seed)
    client = Client(port, key)
    interval = 1.0 / rate
    next_at = time.monotonic()
    recent: list[str] = []
    while not stop.is_set():
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            next_at = time.monotonic()
        status, health = client.call("GET", "/health")
        if status == 200 and health.get("jobs_queued", 0) >= pending_cap:
            stop.wait(0.2)
            continue
        body = {"source_url": f"https://media.example.com/soak/{rng.getrandbits(40):x}.mp4",
                "target_codec": rng.choice(CODECS),
                "job_size": round(rng.lognormvariate(5, 1.5), 1),
                "priority": rng.choice((0, 0, 0, 1, 5))}
        status, job = client.call("POST", "/jobs/", body)
        tally.count("submit", status)
        if status == 201:
            with tally.lock:
                tally.submitted.add(job["job_id"])
            recent.append(job["job_id"])
            recent = recent[-200:]
        elif status != 503:  # 503 queue_full is allowed
            tally.problem(f"submit answered {status}: {job}")
        roll = rng.random()
        if roll < 0.03 and recent:  # cancel a recent job, whatever its state
            job_id = rng.choice(recent)
            status, answer = client.call("DELETE", f"/jobs/{job_id}")
            tally.count("cancel", status)
            if status == 200:
                with tally.lock:
                    tally.cancelled.add(job_id)
                    tally.retried.discard(job_id)
            elif status != 409:
                tally.problem(f"cancel answered {status}: {answer}")
        elif roll < 0.05:  # send a failed (or cancelled) job back to the queue
            with tally.lock:
                candidates = tally.failed_seen[-50:]
            if candidates:
                job_id = rng.choice(candidates)
                status, answer = client.call("POST", f"/jobs/{job_id}/retry")
                tally.count("retry", status)
                if status == 200:
                    with tally.lock:
                        tally.retried.add(job_id)
                        tally.cancelled.discard(job_id)
                elif status not in (404, 409):  # purged meanwhile / not failed any more
                    tally.problem(f"retry answered {status}: {answer}")
    client.close()


def reader(port: int, key: str, tally: Tally, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    client = Client(port, key)
    while not stop.is_set():
        roll = rng.random()
        if roll < 0.3:
            status_filter = rng.choice((None, "pending", "completed", "failed"))
            query = f"?limit=50&offset={rng.randrange(0, 500)}"
            if status_filter:
                query += f"&status={status_filter}"
            status, page = client.call("GET", f"/jobs/{query}")
            tally.count("list", status)
            if status == 200 and status_filter == "failed":
                with tally.lock:
                    tally.failed_seen.extend(j["job_id"] for j in page["jobs"])
                    tally.failed_seen = tally.failed_seen[-500:]
        elif roll < 0.6:
            with tally.lock:
                pool = list(tally.submitted)[-500:] if tally.submitted else []
            if pool:
                status, _ = client.call("GET", f"/jobs/{rng.choice(pool)}")
                tally.count("get", status)  # 404 once purged
        elif roll < 0.8:
            status, _ = client.call("GET", "/stats")
            tally.count("stats", status)
        elif roll < 0.9:
            status, _ = client.call("GET", "/metrics")
            tally.count("metrics", status)
        else:
            status, _ = client.call("GET", "/engines/")
            tally.count("engines", status)
        stop.wait(0.05)
    client.close()


class Engine(threading.Thread):
    """A transcoding engine: heartbeats, takes jobs, reports; dies and comes back."""

    def __init__(self, index: int, port: int, key: str, tally: Tally, stop: threading.Event,
                 lifetime: float | None, seed: int) -> None:
        super().__init__(name=f"engine-{index}", daemon=True)
        self.engine_id = f"soak-engine-{index:02d}"
        self.port, self.key, self.tally, self.stop = port, key, tally, stop
        self.rng = random.Random(seed)
        self.codecs = self.rng.sample(CODECS, self.rng.randint(1, 4))
        self.lifetime = lifetime  # None: stays until the end
        self.held: dict[str, Any] | None = None
        self.died_at: float | None = None

    def heartbeat(self, client: Client) -> bool:
        body = {"engine_id": self.engine_id, "supported_codecs": self.codecs,
                "engine_type": "soak", "storage_capacity_gb": 2000.0,
                "status": "busy" if self.held else "idle",
                "local_job_queue": [self.held["job_id"]] if self.held else []}
        status, answer = client.call("POST", "/engines/heartbeat", body)
        self.tally.count("heartbeat", status)
        if status != 200:
            self.tally.problem(f"heartbeat answered {status}: {answer}")
            return False
        if self.held and self.held["job_id"] in answer.get("cancelled_jobs", []):
            with self.tally.lock:
                self.tally.engine_events["job withdrawn on heartbeat"] += 1
            self.held = None
        return True

    def report(self, client: Client, kind: str, body: dict[str, Any]) -> None:
        assert self.held is not None
        job_id = self.held["job_id"]
        body = {**body, "engine_id": self.engine_id, "attempt": self.held["attempt"]}
        status, answer = client.call("POST", f"/jobs/{job_id}/{kind}", body)
        self.tally.count(kind, status)
        if status == 200 and kind == "complete":
            with self.tally.lock:
                self.tally.completed.add(job_id)
        elif status == 200 and kind == "fail" and answer.get("status") == "failed":
            with self.tally.lock:
                self.tally.failed_seen.append(job_id)
        elif status == 409:
            # Expected only when the job was taken from us: we died meanwhile, or it
            # was cancelled.
            with self.tally.lock:
                self.tally.engine_events[f"{kind} refused (409)"] += 1
                if self.died_at is None and job_id not in self.tally.cancelled:
                    self.tally.unexpected.append(
                        f"{self.engine_id}: {kind} of {job_id} refused though the engine "
                        f"never died: {answer}")
        elif status != 200:
            self.tally.problem(f"{kind} answered {status}: {answer}")
        if kind in ("complete", "fail") or status != 200:
            self.held = None
            self.died_at = None

    def run(self) -> None:
        client = Client(self.port, self.key)
        born = time.monotonic()
        last_beat = 0.0
        with self.tally.lock:
            self.tally.engine_events["joined"] += 1
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if self.lifetime is not None and now - born > self.lifetime:
                    with self.tally.lock:
                        self.tally.engine_events["left for good"] += 1
                    return  # silent from now on: the server marks it offline
                if now - last_beat >= 1.0:
                    if not self.heartbeat(client):
                        self.stop.wait(1)
                        continue
                    last_beat = now
                roll = self.rng.random()
                if roll < 0.01:  # die: silent for longer than the timeout
                    self.silence(self.rng.uniform(ENGINE_TIMEOUT + 1.5, 3 * ENGINE_TIMEOUT),
                                 "died (silent > timeout)")
                    last_beat = 0.0
                    continue
                if roll < 0.02:  # a hiccup: silent for less than the timeout
                    self.silence(self.rng.uniform(0.5, ENGINE_TIMEOUT / 2), "paused (< timeout)")
                    last_beat = 0.0
                    continue
                if self.held is None:
                    status, job = client.call("POST", "/assign_job/",
                                              {"engine_id": self.engine_id})
                    self.tally.count("assign", status)
                    if status == 200:
                        self.held = job
                        self.died_at = None
                    elif status == 204:
                        self.stop.wait(0.2)
                    else:
                        self.tally.problem(f"assign answered {status}: {job}")
                        self.stop.wait(0.5)
                    continue
                # Work on the held job a little, then finish it.
                self.stop.wait(self.rng.uniform(0.05, 0.4))
                step = self.rng.random()
                if step < 0.35:
                    self.report(client, "progress", {"progress": round(
                        self.rng.uniform(1, 99), 1)})
                elif step < 0.88:
                    self.report(client, "complete", {
                        "output_url": f"https://media.example.com/out/{self.held['job_id']}.mp4"})
                else:
                    self.report(client, "fail", {"error_message": "soak: simulated failure"})
        finally:
            client.close()

    def silence(self, seconds: float, event: str) -> None:
        with self.tally.lock:
            self.tally.engine_events[event] += 1
        if seconds > ENGINE_TIMEOUT:
            self.died_at = time.monotonic()
        self.stop.wait(seconds)


# ---------------------------------------------------------------- the checks

def list_all(client: Client, status: str | None = None) -> tuple[list[dict[str, Any]], int]:
    jobs: list[dict[str, Any]] = []
    total = None
    offset = 0
    while total is None or offset < total:
        query = f"?limit=1000&offset={offset}" + (f"&status={status}" if status else "")
        code, page = client.call("GET", f"/jobs/{query}")
        if code != 200:
            raise RuntimeError(f"GET /jobs/{query} answered {code}: {page}")
        total = page["total"]
        jobs.extend(page["jobs"])
        if not page["jobs"]:
            break
        offset += len(page["jobs"])
    return jobs, total or 0


def job_rule(job: dict[str, Any]) -> str | None:
    """What is wrong with a job's fields for its status, or None."""
    status = job.get("status")
    if status == "pending":
        if job.get("assigned_engine") or job.get("completed_at"):
            return "pending but holds an engine or a completion time"
    elif status in ("assigned", "processing"):
        if not job.get("assigned_engine"):
            return f"{status} without an engine"
    elif status == "completed":
        if not job.get("output_url") or not job.get("completed_at"):
            return "completed without output_url or completed_at"
    elif status == "failed":
        if not job.get("completed_at") or not job.get("error_message"):
            return "failed without completed_at or error_message"
    elif status == "cancelled":
        if not job.get("completed_at"):
            return "cancelled without completed_at"
    else:
        return f"unknown status {status!r}"
    return None


def check_state(client: Client, frozen: bool) -> tuple[list[str], dict[str, Any]]:
    """Each job under exactly one status, /stats = listings, fields fit the status.

    Live (not frozen), finished jobs may be purged between two pages, so only the
    unfinished statuses are compared exactly."""
    problems: list[str] = []
    code, stats = client.call("GET", "/stats")
    if code != 200:
        return [f"/stats answered {code}"], {}
    where: dict[str, list[str]] = {}
    by_status: dict[str, list[dict[str, Any]]] = {}
    for status in ("pending", "assigned", "processing", *FINISHED):
        jobs, total = list_all(client, status)
        by_status[status] = jobs
        exact = frozen or status not in FINISHED
        if exact and (len(jobs) != total or total != stats["jobs"].get(status)):
            problems.append(f"{status}: listed {len(jobs)}, page total {total}, "
                            f"/stats {stats['jobs'].get(status)}")
        for job in jobs:
            where.setdefault(job["job_id"], []).append(status)
            if job.get("status") != status:
                problems.append(f"{job['job_id']} listed under {status} but is "
                                f"{job.get('status')}")
            rule = job_rule(job)
            if rule:
                problems.append(f"{job['job_id']}: {rule}")
    for job_id, statuses in where.items():
        if len(statuses) > 1 and (frozen or not set(statuses) <= set(FINISHED)):
            problems.append(f"{job_id} listed under {statuses}")
    if frozen:
        everything, total = list_all(client)
        ids = [job["job_id"] for job in everything]
        if len(ids) != len(set(ids)):
            problems.append(f"the full listing repeats {len(ids) - len(set(ids))} jobs")
        if set(ids) != set(where):
            problems.append(f"full listing ({len(ids)}) and status listings ({len(where)}) "
                            "hold different jobs")
        if total != stats["jobs"]["total"]:
            problems.append(f"listing total {total} != /stats total {stats['jobs']['total']}")
    for status in ("assigned", "processing"):
        if by_status[status]:
            problems.append(f"{len(by_status[status])} jobs still {status} with every "
                            "engine silent past the timeout")
    return problems[:50], {"stats": stats, "by_status": by_status}


# ----------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="dispatch-server soak test")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--engines", type=int, default=10, help="engines at any time")
    parser.add_argument("--rate", type=float, default=30.0, help="submissions per second")
    parser.add_argument("--pending-cap", type=int, default=400)
    parser.add_argument("--preload", type=int, default=10_000, help="jobs stored at start")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the server folder")
    args = parser.parse_args(argv)
    duration = args.minutes * 60
    if not 0 < duration <= 24 * 3600:
        parser.error("--minutes must be in (0, 1440]")

    workdir = Path(tempfile.mkdtemp(prefix="dispatch-soak-"))
    key = "soak-" + str(random.Random(args.seed).getrandbits(64))
    cache = run.StateCache(workdir)
    folder = cache.fresh_dir(args.preload) if args.preload else workdir / "srv"
    folder.mkdir(exist_ok=True)
    config = folder / "soak.conf"
    config.write_text("cleanup_interval = 5\n")
    soak_env = {"DISTCONV_JOB_RETENTION": str(RETENTION), "DISTCONV_RETRY_BACKOFF": "1",
                "DISTCONV_RETRY_BACKOFF_MAX": "8"}
    flags = ("--engine-timeout", str(ENGINE_TIMEOUT), "--config", str(config))
    print(f"soak: {args.minutes:g} min, server folder {folder}", flush=True)
    server = run.start_dispatch(folder, key, *flags, env=soak_env)
    print(f"server up in {server.startup_seconds:.2f} s (port {server.port}, "
          f"{args.preload:,} jobs preloaded)", flush=True)

    tally = Tally()
    stop = threading.Event()
    threads: list[threading.Thread] = [
        threading.Thread(target=submitter, args=(server.port, key, tally, stop,
                                                 args.rate / 2, args.pending_cap,
                                                 args.seed * 100 + i), daemon=True)
        for i in range(2)
    ] + [threading.Thread(target=reader, args=(server.port, key, tally, stop,
                                               args.seed * 200), daemon=True)]
    for thread in threads:
        thread.start()
    rng = random.Random(args.seed)
    engines: list[Engine] = []
    next_index = 0

    def spawn(lifetime: float | None) -> None:
        nonlocal next_index
        engine = Engine(next_index, server.port, key, tally, stop, lifetime,
                        args.seed * 1000 + next_index)
        next_index += 1
        engine.start()
        engines.append(engine)

    for _ in range(args.engines // 2):
        spawn(None)  # the stable core
    samples: list[tuple[float, int, int]] = []  # (t, worker RSS KiB, stored jobs)
    reference_at = min(120.0, 0.2 * duration)
    started = time.monotonic()
    last_print = 0.0
    try:
        while (elapsed := time.monotonic() - started) < duration:
            if server.proc.poll() is not None:  # type: ignore[union-attr]
                raise RuntimeError(f"the server died: {server.log_tail()}")
            # Keep the pool at --engines: short-lived ones join as others leave.
            alive = sum(1 for e in engines if e.is_alive())
            while alive < args.engines:
                spawn(rng.uniform(15, 90))
                alive += 1
            rss = run.proc_status(server.worker)["VmRSS"]
            code, stats = run.http_get(server.port, "/stats", key)
            stored = json.loads(stats)["jobs"]["total"] if code == 200 else -1
            samples.append((elapsed, rss, stored))
            if elapsed - last_print >= 30:
                last_print = elapsed
                with tally.lock:
                    done = len(tally.completed)
                print(f"  {elapsed:5.0f} s: worker RSS {rss / 1024:6.1f} MiB, {stored:,} jobs "
                      f"stored, {done:,} completed by engines, {next_index} engines so far",
                      flush=True)
            time.sleep(2.0)
    finally:
        stop.set()
        for thread in threads + engines:
            thread.join(timeout=40)

    failures: list[str] = []
    reference = min(samples, key=lambda s: abs(s[0] - reference_at)) if samples else None
    end = samples[-1] if samples else None
    rss_flat = None
    if reference and end:
        growth = end[1] - reference[1]
        allowed = max(0.05 * reference[1], 8 * 1024)
        rss_flat = growth <= allowed
        if not rss_flat:
            failures.append(f"worker RSS grew {growth / 1024:.1f} MiB from "
                            f"{reference[0]:.0f} s to the end (allowed {allowed / 1024:.1f})")

    # 1. live: wait until every engine has been silent past the timeout.
    time.sleep(ENGINE_TIMEOUT + 2.5)
    client = Client(server.port, key)
    live_problems, live = check_state(client, frozen=False)
    failures += [f"live: {p}" for p in live_problems]
    unfinished_live = {j["job_id"]: j["status"] for s in ("pending", "assigned", "processing")
                       for j in live.get("by_status", {}).get(s, [])}
    client.close()

    # 2. graceful stop, restart without retention, full check on a frozen state.
    code = server.stop()
    if code != 0:
        failures.append(f"graceful stop exited {code}")
    server2 = run.start_dispatch(folder, key, "--engine-timeout", str(ENGINE_TIMEOUT))
    client = Client(server2.port, key)
    try:
        frozen_problems, frozen = check_state(client, frozen=True)
        failures += [f"after restart: {p}" for p in frozen_problems]
        present = {j["job_id"]: j for jobs in frozen.get("by_status", {}).values()
                   for j in jobs}
        preloaded = set(cache.ids.get(args.preload, []))
        phantom = set(present) - tally.submitted - preloaded
        if phantom:
            failures.append(f"{len(phantom)} jobs nobody submitted, e.g. {sorted(phantom)[:3]}")
        for job_id in tally.completed & set(present):
            if present[job_id]["status"] != "completed":
                failures.append(f"{job_id} was completed, now {present[job_id]['status']}")
        for job_id in (tally.cancelled - tally.retried) & set(present):
            if present[job_id]["status"] != "cancelled":
                failures.append(f"{job_id} was cancelled, now {present[job_id]['status']}")
        unfinished_now = {i: j["status"] for i, j in present.items()
                          if j["status"] not in FINISHED}
        if unfinished_now != unfinished_live:
            changed = set(unfinished_now.items()) ^ set(unfinished_live.items())
            failures.append(f"unfinished jobs differ before/after the restart: "
                            f"{sorted(changed)[:5]}")
        acknowledged_missing = len(tally.submitted - set(present))
        restart_seconds = server2.startup_seconds
    finally:
        client.close()
        code2 = server2.stop()
    if code2 != 0:
        failures.append(f"graceful stop after the check exited {code2}")
    failures += [f"during the load: {p}" for p in tally.unexpected[:30]]

    # Summary.
    calls = Counter()
    for name, n in tally.calls.items():
        calls[name] += n
    print()
    print(f"soak summary ({args.minutes:g} min, engine timeout {ENGINE_TIMEOUT:g} s, "
          f"retention {RETENTION:g} s)")
    print(f"  requests: {sum(calls.values()):,}; by endpoint and status: "
          + ", ".join(f"{k}: {v:,}" for k, v in sorted(calls.items())))
    print(f"  jobs: {len(tally.submitted):,} submitted, {len(tally.completed):,} completed by "
          f"engines, {len(tally.cancelled):,} cancelled, {len(tally.retried):,} retried; "
          f"{len(present):,} stored at the end ({acknowledged_missing:,} of ours purged as "
          "finished)")
    print(f"  engines: {next_index} started; " + ", ".join(
        f"{k}: {v}" for k, v in sorted(tally.engine_events.items())))
    if reference and end:
        print(f"  worker RSS: {reference[1] / 1024:.1f} MiB at {reference[0]:.0f} s "
              f"({reference[2]:,} jobs stored), {end[1] / 1024:.1f} MiB at {end[0]:.0f} s "
              f"({end[2]:,} jobs); peak {max(s[1] for s in samples) / 1024:.1f} MiB -> "
              f"{'flat' if rss_flat else 'GROWING'}")
    print(f"  restart after the soak: serving in {restart_seconds:.2f} s")
    status_counts = {s: len(v) for s, v in frozen.get("by_status", {}).items()}
    print(f"  final state: {status_counts}; /stats matches the listings: "
          f"{'yes' if not [f for f in failures if 'stats' in f] else 'NO'}")
    if failures:
        print(f"FAILED ({len(failures)}):")
        for failure in failures[:40]:
            print(f"  - {failure}")
    else:
        print("PASSED: every job in exactly one consistent state, /stats = job list, "
              "RSS flat")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
