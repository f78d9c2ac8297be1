"""Start-up time with a large stored state: from spawning the server to the first 200
from GET /health.

    .venv/bin/python -m bench.startup                       # 100,000 jobs, 5 runs
    .venv/bin/python -m bench.startup --tree /tmp/old --tree .  # two trees, alternating

The state is built once, through this tree's own snapshot writer, from ``--jobs`` Job
objects of mixed statuses (mostly completed, some pending, failed, cancelled, and a
few held by registered engines), each with the history its transitions produce. Every
start gets a fresh copy of it. Each tree's server runs as ``python -m dispatch.cli``
with ``PYTHONPATH`` set to that tree (checked: its own ``dispatch`` is imported), so an
older checkout can be measured beside this one in the same run, starts alternating.
Prints each start and the median per tree; exit 1 when a start failed.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from dispatch.domain.history import transition_events
from dispatch.domain.models import Engine, Job
from dispatch.storage.journal.snapshot import write_lines
from dispatch.storage.memory.store import SnapshotData

CODECS = ("h264", "h265", "vp9", "av1")
ENGINES = 40
SERVER_FLAGS = ("--queue-size", "1000000", "--max-jobs", "100000")
THIS_TREE = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ the state

def _job(seq: int, rng: random.Random, start: float,
         all_pending: bool) -> tuple[Job, list[list[Any]]]:
    """One job as the server would have stored it, and its history."""
    created = round(start + seq * 0.5 + rng.random() * 0.1, 6)
    job_id = f"{int(created * 1_000_000)}_{seq}"
    pending = Job(job_id=job_id, seq=seq,
                  source_url=f"s3://media-in/library/{seq // 1000:04d}/{job_id}.mov",
                  target_codec=rng.choice(CODECS),
                  job_size=round(rng.lognormvariate(5.5, 1.2), 1),
                  priority=rng.choice((0, 0, 0, 0, 0, 0, 0, 1, 2, 5)),
                  max_retries=3, created_at=created, updated_at=created)
    steps: list[tuple[float, Job]] = [(created, pending)]
    roll = 0.0 if all_pending else rng.random()
    now = created
    if roll >= 0.08:
        engine = f"engine-{rng.randrange(ENGINES):02d}"
        now += rng.uniform(1, 600)
        job = replace(pending, status="assigned", assigned_engine=engine, assigned_at=now,
                      attempt=1, updated_at=now)
        steps.append((now, job))
        for progress in (0.0, 30.0, 60.0, 90.0):
            now += rng.uniform(5, 600)
            job = replace(job, status="processing", progress=progress, progress_at=now,
                          updated_at=now)
            steps.append((now, job))
        now += rng.uniform(5, 600)
        if roll < 0.97:
            steps.append((now, replace(job, status="completed", progress=100.0,
                                       completed_at=now, updated_at=now,
                                       output_url=f"s3://media-out/{job_id}.mp4")))
        elif roll < 0.98:  # its one attempt failed, no retries left
            steps.append((now, replace(job, status="failed", retries=1, max_retries=0,
                                       completed_at=now, updated_at=now,
                                       error_message="ffmpeg exited with status 1")))
        elif roll < 0.99:
            steps.append((now, replace(job, status="cancelled", completed_at=now,
                                       updated_at=now)))
        # else: still processing on its engine
    events: list[list[Any]] = []
    old: Job | None = None
    for at, new in steps:
        events.extend(transition_events(old, new, at))
        old = new
    return steps[-1][1], events


def write_state(path: Path, n: int, seed: int = 7, histories: bool = True,
                all_pending: bool = False) -> dict[str, int]:
    """A snapshot of ``n`` jobs with their histories (or none, as a state carried over
    from the C++ server has), written as the server writes it (journal_seq 0, no
    journal). Returns the count of jobs per status."""
    rng = random.Random(seed + n)
    start = time.time() - 86_400 - n * 0.5  # created over the past days, oldest first
    jobs, events, counts = [], {}, {}
    for seq in range(n):
        job, history = _job(seq, rng, start, all_pending)
        jobs.append(job)
        if histories:
            events[job.job_id] = history
        counts[job.status] = counts.get(job.status, 0) + 1
    now = time.time()
    engines = [Engine(engine_id=f"engine-{i:02d}", registered_at=now - 86_400,
                      last_heartbeat=now, engine_type="ffmpeg", hostname=f"node{i}",
                      supported_codecs=CODECS) for i in range(ENGINES)]
    with open(path, "wb") as handle:
        write_lines(handle, SnapshotData(seq=0, jobs=jobs, engines=engines,
                                         tables={"events": events}))
    return counts


# ------------------------------------------------------------------ the server

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health(port: int) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def tree_env(tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTCONV_")}
    env["PYTHONPATH"] = str(tree)
    env["DISTCONV_API_KEY"] = secrets.token_hex(16)
    return env


def check_tree(tree: Path) -> None:
    """The tree's own ``dispatch`` is the one its server imports (the venv may hold an
    editable install of another tree)."""
    found = subprocess.run(
        [sys.executable, "-c", "import dispatch; print(dispatch.__file__)"],
        cwd=tree, env=tree_env(tree), capture_output=True, text=True, check=True,
    ).stdout.strip()
    if Path(found).resolve() != (tree / "dispatch" / "__init__.py").resolve():
        raise SystemExit(f"{tree}: imports dispatch from {found}")


def cpu_seconds(pid: int) -> float:
    """CPU (user + system) of a process and of its exited, waited-for children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def start_once(tree: Path, state: Path, workdir: Path,
               timeout: float) -> tuple[float, float]:
    """Seconds from spawning the server on a fresh copy of ``state`` to the first
    200 from /health, and the CPU seconds the server's processes (gunicorn's master
    and worker) had used by then, a figure less moved by other load on the machine;
    the server is stopped (SIGTERM) afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="start-", dir=workdir))
    shutil.copyfile(state, folder / "server_state.json")
    port = free_port()
    argv = [sys.executable, "-m", "dispatch.cli", "--host", "127.0.0.1",
            "--port", str(port), "--state-file", str(folder / "server_state.json"),
            "--log-file", str(folder / "server.log"), *SERVER_FLAGS]
    with open(folder / "stderr.log", "wb") as log:
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=tree, env=tree_env(tree), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if health(port) == 200:
                seconds = time.monotonic() - started
                cpu = sum(cpu_seconds(pid) for pid in [proc.pid, *children(proc.pid)])
                break
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}; see {folder}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"not serving after {timeout} s; see {folder}")
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    shutil.rmtree(folder, ignore_errors=True)
    return seconds, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5, help="starts per tree")
    parser.add_argument("--tree", type=Path, action="append",
                        help="a checkout whose server to start (repeatable; "
                             "default: this one)")
    parser.add_argument("--no-history", action="store_true",
                        help="jobs without histories (as imported from the C++ server)")
    parser.add_argument("--all-pending", action="store_true",
                        help="every job pending (as after submitting them to a server)")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    trees = [tree.resolve() for tree in (args.tree or [THIS_TREE])]
    for tree in trees:
        check_tree(tree)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        workdir = Path(tmp)
        state = workdir / "server_state.json"
        made = time.monotonic()
        counts = write_state(state, args.jobs, histories=not args.no_history,
                             all_pending=args.all_pending)
        print(f"state: {args.jobs} jobs {counts}, "
              f"{'no' if args.no_history else 'with'} histories, "
              f"{state.stat().st_size / 1e6:.1f} MB, "
              f"written in {time.monotonic() - made:.1f} s", flush=True)
        times: dict[Path, list[float]] = {tree: [] for tree in trees}
        cpus: dict[Path, list[float]] = {tree: [] for tree in trees}
        failed = False
        for run in range(args.runs):
            for tree in trees:
                try:
                    seconds, cpu = start_once(tree, state, workdir, args.timeout)
                except RuntimeError as exc:
                    print(f"run {run + 1} {tree}: FAILED {exc}", flush=True)
                    failed = True
                    continue
                times[tree].append(seconds)
                cpus[tree].append(cpu)
                print(f"run {run + 1} {tree}: {seconds:.3f} s (CPU {cpu:.2f} s)", flush=True)
        for tree, values in times.items():
            if values:
                print(f"{tree}: median {statistics.median(values):.3f} s over "
                      f"{len(values)} starts (min {min(values):.3f}, "
                      f"max {max(values):.3f}); CPU median "
                      f"{statistics.median(cpus[tree]):.2f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
