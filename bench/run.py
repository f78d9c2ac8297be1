"""The dispatch server's benchmark suite (``make bench``).

Starts the real ``dispatch-server`` (gunicorn, shipped config, durable journal in a
temporary folder on disk) on loopback, preloaded by writing its state file directly,
and drives it with ``bench.loadgen``. Prints one table and writes
``bench/results/latest.json``. See bench/README.md for what each figure means.

    .venv/bin/python -m bench.run            # 3 runs, medians (~10 minutes)
    .venv/bin/python -m bench.run --quick    # 1 short run, a smoke test (~2 minutes)
    .venv/bin/python -m bench.run --quick --sizes 100 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from bench import loadgen
from dispatch.domain.models import Job
from dispatch.storage.journal.snapshot import write_lines
from dispatch.storage.memory.store import SnapshotData

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

SERVER_BIN = Path(sys.executable).with_name("dispatch-server")
CODECS = loadgen.CODECS
SIZES = (100, 10_000, 100_000)
SERVER_FLAGS = ("--queue-size", "1000000", "--max-jobs", "100000")
KIB = 1024


# ------------------------------------------------------------------ state files

def make_jobs(n: int, *, all_pending: bool = False, seed: int = 7) -> list[Job]:
    """``n`` jobs as the server would have stored them: ids ``{micros}_{seq}`` in
    creation order, mixed codecs and sizes; mostly completed, some pending, a few
    failed and cancelled (or every one pending, for the assign benchmark)."""
    rng = random.Random(seed + n)
    start = time.time() - 86_400 - n * 0.5  # created over the past days, oldest first
    jobs = []
    for seq in range(n):
        created = round(start + seq * 0.5 + rng.random() * 0.1, 6)
        job_id = f"{int(created * 1_000_000)}_{seq}"
        common = dict(
            job_id=job_id, seq=seq,
            source_url=f"s3://media-in/library/{seq // 1000:04d}/{job_id}.mov",
            target_codec=rng.choice(CODECS),
            job_size=round(rng.lognormvariate(5.5, 1.2), 1),
            priority=rng.choice((0, 0, 0, 0, 0, 0, 0, 1, 2, 5)),
            max_retries=3, created_at=created,
        )
        roll = 0.0 if all_pending else rng.random()
        if roll < 0.08:
            job = Job(**common, updated_at=created)  # pending
        elif roll < 0.98 or roll >= 0.995:
            engine = f"engine-{rng.randrange(40):02d}"
            assigned = created + rng.uniform(1, 600)
            done = assigned + rng.uniform(30, 3600)
            if roll < 0.98:
                job = Job(**common, updated_at=done, status="completed",
                          assigned_engine=engine, assigned_at=assigned, completed_at=done,
                          output_url=f"s3://media-out/{job_id}.mp4", progress=100.0,
                          attempt=1, progress_at=done)
            else:
                job = Job(**common, updated_at=done, status="cancelled", completed_at=done)
        else:
            failed_at = created + rng.uniform(60, 7200)
            job = Job(**common, updated_at=failed_at, status="failed", retries=4,
                      assigned_engine=None, completed_at=failed_at, attempt=4,
                      error_message="ffmpeg exited with status 1: invalid data in stream")
        jobs.append(job)
    return jobs


def write_state(path: Path, jobs: list[Job]) -> None:
    """A snapshot exactly as the server writes it (journal_seq 0, no journal)."""
    with open(path, "wb") as handle:
        write_lines(handle, SnapshotData(seq=0, jobs=jobs, engines=[], tables={}))


class StateCache:
    """State files made once per (size, kind) and copied into a fresh folder for
    every server started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[tuple[int, str], Path] = {}
        self.ids: dict[int, list[str]] = {}

    def get(self, n: int, kind: str = "mixed") -> Path:
        key = (n, kind)
        if key not in self.files:
            jobs = make_jobs(n, all_pending=kind == "pending")
            path = self.root / f"state-{kind}-{n}.json"
            write_state(path, jobs)
            self.files[key] = path
            if kind == "mixed":
                self.ids[n] = [job.job_id for job in jobs]
        return self.files[key]

    def fresh_dir(self, n: int, kind: str = "mixed") -> Path:
        folder = Path(tempfile.mkdtemp(prefix=f"srv-{kind}-{n}-", dir=self.root))
        if n:
            shutil.copyfile(self.get(n, kind), folder / "server_state.json")
        return folder


# ------------------------------------------------------------------ processes

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(port: int, path: str, api_key: str | None = None,
             timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a fresh connection (for readiness and checks, not for load)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(loadgen.request_bytes("GET", path, f"127.0.0.1:{port}", api_key)
                     .replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(x) for x in text.split()]
    except OSError:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
        return found


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) and friends of a process, in KiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key.startswith("Vm") or key.startswith("Rss"):
            values[key] = int(rest.split()[0])
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            if key in ("Pss", "Private_Dirty", "Shared_Clean", "Shared_Dirty"):
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used since boot (non-idle)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def io_write_bytes(pid: int) -> int | None:
    """Bytes the process caused to be sent to the storage layer (page granularity)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Proc:
    """A server under test: ``dispatch-server`` or the bare baseline, in its own
    process group, logging to a file in its folder."""

    def __init__(self, argv: list[str], folder: Path, env: dict[str, str], port: int,
                 api_key: str | None, cwd: Path | None = None) -> None:
        self.argv, self.folder, self.env, self.port = argv, folder, env, port
        self.api_key = api_key
        self.cwd = cwd or folder  # where the process runs: its folder unless it needs ROOT
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = float("nan")
        self.stop_seconds = float("nan")
        self.worker = 0

    def start(self, timeout: float = 60.0) -> Proc:
        log = open(self.folder / "server.log", "ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            try:
                if http_get(self.port, "/health", timeout=1.0)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() - started > timeout:
                self.kill()
                raise RuntimeError(f"not serving after {timeout}s: {self.log_tail()}")
            time.sleep(0.005)
        self.startup_seconds = time.monotonic() - started
        workers = children_of(self.proc.pid)
        if len(workers) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {workers}")
        self.worker = workers[0]
        return self

    def log_tail(self, lines: int = 20) -> str:
        path = self.folder / "server.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def first_error(self) -> str:
        """The first logged error (with a few lines of its traceback), for reports."""
        path = self.folder / "server.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for i, line in enumerate(lines):
            if " ERROR " in line or line.startswith("Traceback"):
                tail = [x for x in lines[i + 1:i + 40] if x.strip()]
                return " | ".join([line, *tail[-3:]])[:600]
        return "(no error logged)"

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM as systemd does (graceful: final snapshot); SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self.stop_seconds = time.monotonic() - started
        return code

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def start_dispatch(folder: Path, api_key: str, *extra: str,
                   env: dict[str, str] | None = None) -> Proc:
    port = free_port()
    argv = [str(SERVER_BIN), "--host", "127.0.0.1", "--port", str(port),
            "--state-file", str(folder / "server_state.json"), *SERVER_FLAGS, *extra]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DISTCONV_")}
    full_env.update({"DISTCONV_API_KEY": api_key, **(env or {})})
    return Proc(argv, folder, full_env, port, api_key).start()


def start_baseline(folder: Path) -> Proc:
    port = free_port()
    argv = [sys.executable, "-m", "bench.baseline_app", "--host", "127.0.0.1",
            "--port", str(port)]
    # Run from the repository root, where ``python -m`` finds the bench package.
    return Proc(argv, folder, dict(os.environ), port, None, cwd=ROOT).start()


# ---------------------------------------------------------------- measuring

WORKLOADS = (
    # (row name, scenario, label whose rate and latency the row shows)
    ("POST /jobs/ (durable)", "submit", "POST /jobs/"),
    ("GET /jobs/{id}", "get", "GET /jobs/{id}"),
    ("GET /jobs/?limit=50", "list", "GET /jobs/?limit=50"),
    ("POST /engines/heartbeat", "heartbeat", "POST /engines/heartbeat"),
    ("cycle submit>assign>complete", "cycle", "cycle"),
)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.api_key = secrets.token_hex(16)
        self.cache = StateCache(workdir)
        self.client_cores_max = 0.0
        self.client_us: list[float] = []
        self.other_cores: list[float] = []
        self.problems: list[str] = []

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def drive(self, server: Proc, scenario: str, *, conns: int | None = None,
              params: dict[str, Any] | None = None, seed: int = 1,
              seconds: float | None = None) -> dict[str, Any]:
        """One measurement; returns every label's figures plus CPU use."""
        args = self.args
        procs = args.procs
        if conns is None:
            per_proc = args.conns
        else:  # a fixed count (8 clients, 8 engines) whatever --procs/--conns say
            procs = procs if conns % procs == 0 else 1
            per_proc = conns // procs
        if args.wait_idle > 0:
            self.wait_for_quiet(args.wait_idle)
        master = server.proc.pid  # type: ignore[union-attr]
        cpu0, master0 = cpu_seconds(server.worker), cpu_seconds(master)
        busy0 = machine_busy_seconds()
        wall0 = time.monotonic()
        result = loadgen.run("127.0.0.1", server.port, scenario, api_key=server.api_key,
                             procs=procs, conns=per_proc, seconds=seconds or args.seconds,
                             warmup=args.warmup, params=params, seed=seed)
        wall = time.monotonic() - wall0
        server_cpu = cpu_seconds(server.worker) - cpu0
        # CPU used by anything else on the machine meanwhile (other tests, builds):
        # when it is more than a sliver, the figures are low and noisy.
        other = (machine_busy_seconds() - busy0 - server_cpu
                 - (cpu_seconds(master) - master0) - result.client_cpu_seconds)
        self.other_cores.append(max(0.0, other / wall))
        for error in result.errors:
            self.problems.append(f"{scenario}: load process failed: {error.strip()[-400:]}")
        self.client_cores_max = max(self.client_cores_max, result.client_cores)
        self.client_us.append(result.client_us_per_request)
        out: dict[str, Any] = {
            "labels": {name: asdict(stats) for name, stats in result.labels.items()},
            "connections": procs * per_proc,
            "client_cpu_cores": round(result.client_cores, 3),
            "client_cpu_us_per_request": round(result.client_us_per_request, 1),
            "server_cpu_cores": round(server_cpu / wall, 3),
            "server_cpu_us_per_request": round(1e6 * server_cpu / max(1, result.total_requests),
                                               1),
            "other_cpu_cores": round(max(0.0, other / wall), 3),
            "reconnects": result.reconnects,
        }
        for name, stats in result.labels.items():
            bad = {s: n for s, n in stats.statuses.items() if s >= 400}
            if bad and server.api_key is not None:
                self.problems.append(f"{scenario}: {name} answered {bad}; server log: "
                                     f"{server.first_error()}")
        return out

    def wait_for_quiet(self, limit: float, threshold: float = 0.3) -> None:
        """Wait (at most ``limit`` s) until other processes use < ``threshold`` cores."""
        deadline = time.monotonic() + limit
        while True:
            busy0 = machine_busy_seconds()
            time.sleep(0.5)
            used = (machine_busy_seconds() - busy0) / 0.5
            if used < threshold or time.monotonic() >= deadline:
                return
            self.log(f"    waiting for a quieter machine ({used:.2f} cores busy)")

    def measure_rss(self, server: Proc) -> dict[str, Any]:
        worker, master = proc_status(server.worker), proc_status(server.proc.pid)  # type: ignore[union-attr]
        return {"worker": worker, "master": master}

    def warm(self, server: Proc, ids: list[str]) -> None:
        for path in ("/health", "/stats", "/jobs/?limit=50") + tuple(
                f"/jobs/{i}" for i in ids[:3]):
            http_get(server.port, path, self.api_key)

    def stats_total(self, server: Proc) -> int:
        status, body = http_get(server.port, "/stats", self.api_key)
        return orjson.loads(body)["jobs"]["total"] if status == 200 else -1

    # -- one run over every size

    def run_sizes(self, run: int) -> dict[str, Any]:
        out: dict[str, Any] = {"sizes": {}}
        for n in self.args.sizes:
            self.cache.get(n)
            ids = self.cache.ids[n]
            sample = random.Random(run).sample(ids, min(len(ids), 20_000))
            size: dict[str, Any] = {"workloads": {}}

            # Server A: the reads and heartbeats (add no jobs), fresh state.
            folder = self.cache.fresh_dir(n)
            server = start_dispatch(folder, self.api_key)
            try:
                size["startup_seconds"] = [server.startup_seconds]
                self.warm(server, sample)
                size["rss_ready_kib"] = self.measure_rss(server)
                for row, scenario, _ in WORKLOADS[1:4]:
                    self.log(f"  run {run} n={n:,}: {row}")
                    size["workloads"][row] = self.drive(
                        server, scenario, params={"job_ids": sample}, seed=run)
                size["rss_after_load_kib"] = self.measure_rss(server)
            finally:
                server.stop()
            size["stop_seconds"] = [server.stop_seconds]
            shutil.rmtree(folder, ignore_errors=True)

            # Server B: submissions on a fresh copy; the journal's growth per job.
            folder = self.cache.fresh_dir(n)
            server = start_dispatch(folder, self.api_key)
            try:
                size["startup_seconds"].append(server.startup_seconds)
                self.warm(server, sample)
                wal = folder / "server_state.json.wal"
                before_total = self.stats_total(server)
                before = os.stat(wal)
                io_before = io_write_bytes(server.worker)
                self.log(f"  run {run} n={n:,}: {WORKLOADS[0][0]}")
                size["workloads"][WORKLOADS[0][0]] = self.drive(server, "submit", conns=8,
                                                                seed=run)
                after = os.stat(wal)
                io_after = io_write_bytes(server.worker)
                added = self.stats_total(server) - before_total
                if io_before is not None and io_after is not None and added > 0:
                    size["disk_bytes_per_submission"] = (io_after - io_before) / added
                if after.st_ino == before.st_ino and added > 0:
                    size["wal_bytes_per_submission"] = (after.st_size - before.st_size) / added
                else:  # a snapshot rotated the journal meanwhile
                    size["wal_bytes_per_submission"] = None
                size["submitted"] = added
            finally:
                server.stop()
            size["stop_seconds"].append(server.stop_seconds)
            shutil.rmtree(folder, ignore_errors=True)

            # Server C: 8 engines cycling submit -> assign -> complete.
            folder = self.cache.fresh_dir(n)
            server = start_dispatch(folder, self.api_key)
            try:
                size["startup_seconds"].append(server.startup_seconds)
                self.log(f"  run {run} n={n:,}: {WORKLOADS[4][0]}")
                size["workloads"][WORKLOADS[4][0]] = self.drive(server, "cycle", conns=8,
                                                                seed=run)
            finally:
                server.stop()
            shutil.rmtree(folder, ignore_errors=True)

            # Server D: assign latency with n PENDING jobs (kept at n by the engines).
            folder = self.cache.fresh_dir(n, "pending")
            server = start_dispatch(folder, self.api_key)
            try:
                size["startup_seconds"].append(server.startup_seconds)
                self.log(f"  run {run} n={n:,}: POST /assign_job/ with {n:,} pending")
                size["assign"] = self.drive(server, "assign", conns=8, seed=run)
            finally:
                server.stop()
            shutil.rmtree(folder, ignore_errors=True)
            out["sizes"][n] = size
        return out

    def run_baseline(self, run: int) -> dict[str, Any]:
        folder = Path(tempfile.mkdtemp(prefix="baseline-", dir=self.workdir))
        server = start_baseline(folder)
        out: dict[str, Any] = {"workloads": {}}
        try:
            ids = [f"{i}_{i}" for i in range(1000)]
            for row, scenario, _ in WORKLOADS:
                self.log(f"  run {run} bare Flask: {row}")
                out["workloads"][row] = self.drive(
                    server, scenario, conns=8 if scenario in ("cycle", "submit") else None,
                    params={"job_ids": ids}, seed=run)
        finally:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
        return out

    def snapshot_stall(self, n: int) -> dict[str, Any]:
        """Submission latency across a periodic snapshot at ``n`` jobs: the same server
        with the snapshot interval cut from 30 s to 5 s, so that an 8 s window
        holds one snapshot (the only setting changed, and only here)."""
        folder = self.cache.fresh_dir(n)
        server = start_dispatch(folder, self.api_key,
                                env={"DISTCONV_AUTO_SAVE_INTERVAL": "5"})
        try:
            self.log(f"  n={n:,}: POST /jobs/ across a snapshot")
            figures = self.drive(server, "submit", conns=8, seed=99,
                                 seconds=9.0 - self.args.warmup)
            state = orjson.loads((folder / "server_state.json").read_bytes())
            label = figures["labels"].get("POST /jobs/", {})
            return {"jobs": n, "snapshot_taken": state.get("journal_seq", 0) > 0,
                    **{k: label.get(k) for k in ("rate", "p50_ms", "p99_ms", "p999_ms",
                                                 "max_ms")}}
        finally:
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)

    def snapshot_cost(self, n: int) -> dict[str, Any]:
        """In this process: how long loading ``n`` jobs and writing one snapshot of them
        take. The server writes a snapshot every auto_save_interval (30 s) while there
        are changes; its CPU time competes with the request threads for the GIL."""
        folder = self.cache.fresh_dir(n)
        try:
            from dispatch.config.settings import Settings
            from dispatch.service import DispatchService
            from dispatch.storage.journal import JournalStore
            from dispatch.storage.memory import MemoryBackend

            settings = Settings(api_key=self.api_key,
                                state_file=str(folder / "server_state.json"),
                                job_queue_max_size=1_000_000, max_concurrent_jobs=100_000)
            started = time.perf_counter()
            service = DispatchService(settings, MemoryBackend(JournalStore(settings.state_file)))
            loaded = time.perf_counter()
            service.commands.submit_job({"source_url": "https://media.example.com/x.mp4",
                                         "target_codec": "h264", "job_size": 10.0})
            before = time.perf_counter()
            service.maintenance.snapshot()
            done = time.perf_counter()
            service.close()
            return {"jobs": n, "load_seconds": loaded - started,
                    "snapshot_seconds": done - before}
        except Exception as exc:  # the service API moves; this figure is optional
            return {"jobs": n, "error": f"{exc.__class__.__name__}: {exc}"}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def run_empty(self) -> dict[str, Any]:
        """The worker's RSS with no stored job, for the per-job memory figure."""
        folder = self.cache.fresh_dir(0)
        server = start_dispatch(folder, self.api_key)
        try:
            self.warm(server, [])
            return {"startup_seconds": server.startup_seconds,
                    "rss_ready_kib": self.measure_rss(server)}
        finally:
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------- reducing

def median(values: list[float]) -> float:
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else float("nan")


def reduce_runs(runs: list[dict[str, Any]], baselines: list[dict[str, Any]],
                empties: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """Medians over runs of every figure the table and the summary show."""
    def row_figures(workload_runs: list[dict[str, Any]], label: str) -> dict[str, Any]:
        labels = [w["labels"].get(label) for w in workload_runs]
        labels = [x for x in labels if x]
        return {
            "rate": median([x["rate"] for x in labels]),
            "rate_min": min((x["rate"] for x in labels), default=None),
            "rate_max": max((x["rate"] for x in labels), default=None),
            "p50_ms": median([x["p50_ms"] for x in labels]),
            "p99_ms": median([x["p99_ms"] for x in labels]),
            "errors": sum(x["errors"] for x in labels),
            "server_cpu_cores": median([w["server_cpu_cores"] for w in workload_runs]),
            "server_cpu_us_per_request": median([w["server_cpu_us_per_request"]
                                                 for w in workload_runs]),
            "client_cpu_cores": median([w["client_cpu_cores"] for w in workload_runs]),
            "connections": workload_runs[0]["connections"] if workload_runs else None,
        }

    table: dict[str, Any] = {}
    for row, _, label in WORKLOADS:
        base = row_figures([b["workloads"][row] for b in baselines], label)
        entry: dict[str, Any] = {"baseline": base, "sizes": {}}
        for n in sizes:
            fig = row_figures([r["sizes"][n]["workloads"][row] for r in runs], label)
            fig["ratio_to_baseline"] = fig["rate"] / base["rate"] if base["rate"] else None
            entry["sizes"][n] = fig
        table[row] = entry

    summary: dict[str, Any] = {}
    submit = {n: table[WORKLOADS[0][0]]["sizes"][n]["rate"] for n in sizes}
    summary["submissions_per_s_8_clients"] = submit
    if 100 in submit and 100_000 in submit:
        summary["submissions_ratio_100k_to_100"] = submit[100_000] / submit[100]
    summary["wal_bytes_per_submission"] = {
        n: median([r["sizes"][n].get("wal_bytes_per_submission") for r in runs])
        for n in sizes}
    summary["disk_bytes_per_submission"] = {
        n: median([r["sizes"][n].get("disk_bytes_per_submission") for r in runs])
        for n in sizes}
    summary["startup_seconds"] = {
        n: median([s for r in runs for s in r["sizes"][n]["startup_seconds"]]) for n in sizes}
    summary["startup_seconds_max"] = {
        n: max(s for r in runs for s in r["sizes"][n]["startup_seconds"]) for n in sizes}
    summary["startup_seconds_empty"] = median([e["startup_seconds"] for e in empties])
    summary["stop_seconds"] = {
        n: median([s for r in runs for s in r["sizes"][n]["stop_seconds"]]) for n in sizes}

    empty_hwm = median([e["rss_ready_kib"]["worker"]["VmHWM"] for e in empties])
    empty_rss = median([e["rss_ready_kib"]["worker"]["VmRSS"] for e in empties])
    memory: dict[str, Any] = {"worker_empty_VmHWM_kib": empty_hwm,
                              "worker_empty_VmRSS_kib": empty_rss, "sizes": {}}
    for n in sizes:
        hwm = median([r["sizes"][n]["rss_ready_kib"]["worker"]["VmHWM"] for r in runs])
        rss = median([r["sizes"][n]["rss_ready_kib"]["worker"]["VmRSS"] for r in runs])
        master = median([r["sizes"][n]["rss_ready_kib"]["master"]["VmRSS"] for r in runs])
        after = median([r["sizes"][n]["rss_after_load_kib"]["worker"]["VmHWM"] for r in runs])
        pss = median([r["sizes"][n]["rss_after_load_kib"]["worker"].get("Pss", 0)
                      + r["sizes"][n]["rss_after_load_kib"]["master"].get("Pss", 0)
                      for r in runs])
        memory["sizes"][n] = {
            "worker_VmHWM_kib": hwm, "worker_VmRSS_kib": rss, "master_VmRSS_kib": master,
            "worker_VmHWM_after_load_kib": after,
            "master_plus_worker_Pss_after_load_kib": pss,
            "bytes_per_job_peak": (hwm - empty_hwm) * KIB / n,
            "bytes_per_job_rss": (rss - empty_rss) * KIB / n,
            "master_bytes_per_job": (master - median(
                [e["rss_ready_kib"]["master"]["VmRSS"] for e in empties])) * KIB / n,
        }
    summary["memory"] = memory

    assign: dict[str, Any] = {}
    for n in sizes:
        assign[n] = row_figures([r["sizes"][n]["assign"] for r in runs], "POST /assign_job/")
    summary["assign_pending"] = assign
    if 100 in assign and 100_000 in assign:
        summary["assign_p50_ratio_100k_to_100"] = assign[100_000]["p50_ms"] / assign[100]["p50_ms"]
        summary["assign_p99_ratio_100k_to_100"] = assign[100_000]["p99_ms"] / assign[100]["p99_ms"]
    return {"table": table, "summary": summary}


# ----------------------------------------------------------------- printing

def fmt_n(n: int) -> str:
    return f"{n:,}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def render(result: dict[str, Any], meta: dict[str, Any]) -> str:
    table, summary = result["table"], result["summary"]
    sizes = meta["sizes"]
    lines = []
    lines.append(f"dispatch-server benchmark: {meta['runs']} run(s), {meta['seconds']:g} s "
                 f"per measurement, medians; {meta['connections']} keep-alive connections "
                 f"({meta['procs']} load processes) unless noted; {meta['cpus']} CPUs")
    head = (f"{'endpoint':30s} {'jobs':>8s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s} "
            f"{'srv CPU':>7s} | {'bare/s':>7s} {'p50':>6s} {'p99':>6s} | {'ratio':>5s}")
    lines += [head, "-" * len(head)]
    for row, entry in table.items():
        base = entry["baseline"]
        for i, n in enumerate(sizes):
            fig = entry["sizes"][n]
            name = row if i == 0 else ""
            if i == 0:
                bare = (f"{base['rate']:7.0f} {base['p50_ms']:6.2f} {base['p99_ms']:6.2f}")
            else:
                bare = f"{'':7s} {'':6s} {'':6s}"
            errors = f"  ({fig['errors']} errors)" if fig["errors"] else ""
            lines.append(
                f"{name:30s} {fmt_n(n):>8s} {fig['rate']:8.0f} {fig['p50_ms']:7.2f} "
                f"{fig['p99_ms']:7.2f} {fig['server_cpu_cores']:7.2f} | {bare} | "
                f"{fig['ratio_to_baseline']:5.2f}{errors}")
    lines.append("(cycle rows: whole cycles/s and cycle latency, 8 engines, 3 requests each; "
                 "srv CPU: the worker's CPU in cores; ratio: req/s over the bare Flask app's)")
    lines.append("")

    sub = summary["submissions_per_s_8_clients"]
    ratio = summary.get("submissions_ratio_100k_to_100")
    lines.append("submissions/s, 8 clients:    " + ", ".join(
        f"{fmt_n(n)}: {sub[n]:.0f}" for n in sizes)
        + (f";  100k/100 = {ratio:.2f} (target >= 0.9: {verdict(ratio >= 0.9)})"
           if ratio is not None else ""))
    wal = summary["wal_bytes_per_submission"]
    disk = summary["disk_bytes_per_submission"]
    lines.append("journal bytes/submission:     " + ", ".join(
        f"{fmt_n(n)}: {wal[n]:.0f} B" for n in sizes)
        + "  (written to storage by the worker: " + ", ".join(
        f"{disk[n]:.0f} B" for n in sizes) + ")")
    start = summary["startup_seconds"]
    big = start.get(100_000)
    lines.append("start to serving /health:     " + ", ".join(
        f"{fmt_n(n)}: {start[n]:.2f} s" for n in sizes)
        + f"; 0 jobs: {summary['startup_seconds_empty']:.2f} s"
        + (f"  (100k target <= 2 s: {verdict(big <= 2.0)}, worst "
           f"{summary['startup_seconds_max'][100_000]:.2f} s)" if big is not None else ""))
    stop = summary["stop_seconds"]
    lines.append("graceful stop (SIGTERM):      " + ", ".join(
        f"{fmt_n(n)}: {stop[n]:.2f} s" for n in sizes))
    mem = summary["memory"]
    for n in sizes:
        m = mem["sizes"][n]
        per_job = (f"{m['bytes_per_job_peak']:.0f} B/job over empty" if n >= 10_000
                   else "too few jobs for a per-job figure")
        mark = ""
        if n == max(sizes):
            mark = f"  (target <= 1 KiB: {verdict(m['bytes_per_job_peak'] <= KIB)})"
        lines.append(
            f"memory at {fmt_n(n):>7s} jobs:     worker peak {m['worker_VmHWM_kib'] / KIB:.0f} "
            f"MiB, {per_job} (empty server: {mem['worker_empty_VmHWM_kib'] / KIB:.0f} MiB); "
            f"master {m['master_VmRSS_kib'] / KIB:.0f} MiB{mark}")
    big_mem = mem["sizes"][max(sizes)]
    lines.append(f"  master + worker PSS after load at {fmt_n(max(sizes))}: "
                 f"{big_mem['master_plus_worker_Pss_after_load_kib'] / KIB:.0f} MiB (the master "
                 f"loads the state, then frees its copy once the worker has forked)")
    assign = summary["assign_pending"]
    lines.append("assign latency, N pending:    " + ", ".join(
        f"{fmt_n(n)}: p50 {assign[n]['p50_ms']:.2f} / p99 {assign[n]['p99_ms']:.2f} ms "
        f"({assign[n]['rate']:.0f}/s)" for n in sizes))
    if "assign_p50_ratio_100k_to_100" in summary:
        r50, r99 = summary["assign_p50_ratio_100k_to_100"], summary["assign_p99_ratio_100k_to_100"]
        lines.append(f"  100k vs 100: p50 x{r50:.2f}, p99 x{r99:.2f} "
                     f"(target within 2x: {verdict(max(r50, r99) <= 2.0)})")
    snap = summary.get("in_process", {})
    if "snapshot_seconds" in snap:
        lines.append(f"snapshot at {fmt_n(snap['jobs'])} jobs:    {snap['snapshot_seconds']:.2f} s "
                     f"CPU (every 30 s while changes arrive); state load in-process "
                     f"{snap['load_seconds']:.2f} s")
    stall = snap.get("under_load", {})
    if stall.get("rate") is not None:
        lines.append(f"  POST /jobs/ across a snapshot: {stall['rate']:.0f}/s, p50 "
                     f"{stall['p50_ms']:.1f} / p99 {stall['p99_ms']:.1f} / p99.9 "
                     f"{stall['p999_ms']:.1f} / max {stall['max_ms']:.1f} ms"
                     + ("" if stall["snapshot_taken"] else " (NO snapshot seen in the window)"))
    lines.append(f"load generator: at most {meta['client_cores_max']:.2f} cores of "
                 f"{meta['cpus']}, median {meta['client_us_median']:.0f} us CPU/request; "
                 f"bare Flask with the same generator: {meta['baseline_best']:.0f} req/s "
                 f"(> every endpoint: {verdict(meta['baseline_above_all'])})")
    if meta["other_cpu_cores_median"] > 0.25:
        lines.append(f"WARNING: other processes used {meta['other_cpu_cores_median']:.2f} cores "
                     f"(median; max {meta['other_cpu_cores_max']:.2f}) during the measurements: "
                     "the machine was not idle, figures are low and noisy")
    else:
        lines.append(f"other load on the machine: {meta['other_cpu_cores_median']:.2f} cores "
                     "(median over the measurements)")
    if meta["problems"]:
        lines.append("")
        lines.append("PROBLEMS:")
        lines += [f"  - {p}" for p in meta["problems"][:20]]
    return "\n".join(lines)


# --------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs; figures are medians")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each")
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--conns", type=int, default=4,
                        help="connections per load process (concurrency = procs x conns)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=list(SIZES), help="stored-job counts, comma-separated")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 run, 1.5 s measurements, 0.5 s warm-up")
    parser.add_argument("--out", default=str(BENCH / "results" / "latest.json"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each measurement wait up to SECONDS for other "
                        "processes to use < 0.3 cores (for a shared machine)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.seconds, args.warmup = 1, 1.5, 0.5
    if not SERVER_BIN.exists():
        parser.error(f"{SERVER_BIN} not found: run `make install` or `pip install -e .`")

    workdir = Path(tempfile.mkdtemp(prefix="dispatch-bench-"))
    bench = Bench(args, workdir)
    started = time.monotonic()
    runs, baselines, empties = [], [], []
    try:
        bench.log(f"making state files in {workdir}")
        for n in args.sizes:
            bench.cache.get(n)
            bench.cache.get(n, "pending")
        for run in range(1, args.runs + 1):
            bench.log(f"run {run}/{args.runs}")
            empties.append(bench.run_empty())
            baselines.append(bench.run_baseline(run))
            runs.append(bench.run_sizes(run))
        bench.log("snapshot cost at the largest size")
        snapshot = bench.snapshot_cost(max(args.sizes))
        snapshot["under_load"] = bench.snapshot_stall(max(args.sizes))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result = reduce_runs(runs, baselines, empties, args.sizes)
    result["summary"]["in_process"] = snapshot
    baseline_best = max(e["baseline"]["rate"] for row, e in result["table"].items()
                        if not row.startswith("cycle"))
    server_best = max(f["rate"] for row, e in result["table"].items()
                      if not row.startswith("cycle") for f in e["sizes"].values())
    meta = {
        "runs": args.runs, "seconds": args.seconds, "warmup": args.warmup,
        "procs": args.procs, "connections": args.procs * args.conns, "sizes": args.sizes,
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "quick": args.quick, "elapsed_seconds": round(time.monotonic() - started, 1),
        "client_cores_max": bench.client_cores_max,
        "client_us_median": median(bench.client_us),
        "baseline_best": baseline_best,
        "baseline_above_all": baseline_best > server_best,
        "other_cpu_cores_median": median(bench.other_cores),
        "other_cpu_cores_max": max(bench.other_cores, default=0.0),
        "problems": bench.problems,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = render(result, meta)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {"meta": meta, **result, "raw": {"runs": runs, "baseline": baselines,
                                                 "empty": empties}}
    out.write_text(json.dumps(_jsonable(document), indent=1, default=str) + "\n")
    print(f"\nwrote {out} ({meta['elapsed_seconds']:.0f} s)", file=sys.stderr)
    return 1 if bench.problems else 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


if __name__ == "__main__":
    sys.exit(main())
