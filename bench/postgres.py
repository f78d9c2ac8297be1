"""The PostgreSQL backend's figures beside the embedded journal's, in one run.

Starts a PostgreSQL of its own (``initdb``/``pg_ctl`` in a temporary folder, fsync on:
a commit is durable as the journal's is) and, for each workload, the real
``dispatch-server`` on the state file and on the database with 1, 2 and 4 gunicorn
workers, all on this machine, driven by ``bench.loadgen`` with 8 connections:

- ``GET /jobs/{id}`` over 10,000 stored jobs;
- durable ``POST /jobs/``;
- the full submit -> assign -> complete cycle (8 engines);
- ``POST /assign_job/`` p50/p99 with 100 and 100,000 pending jobs (kept at that size).

    .venv/bin/python -m bench.postgres            # ~6 minutes
    .venv/bin/python -m bench.postgres --quick    # ~2 minutes, shorter windows

Writes ``bench/results/postgres.json``. PostgreSQL shares the machine's two cores
with the server and the load generator, as it would not in production.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import loadgen, run
from dispatch.bootstrap import open_state
from dispatch.tools.copy_state import Farm, write_farm
from tests.support.postgres import PostgresServer

BENCH = Path(__file__).resolve().parent

WORKERS = (1, 2, 4)


class Server:
    """A ``dispatch-server`` with any number of workers, in its own process group."""

    def __init__(self, folder: Path, api_key: str, *extra: str) -> None:
        self.folder = folder
        self.port = run.free_port()
        self.api_key = api_key
        argv = [str(run.SERVER_BIN), "--host", "127.0.0.1", "--port", str(self.port),
                "--state-file", str(folder / "server_state.json"), *run.SERVER_FLAGS, *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTCONV_")}
        env["DISTCONV_API_KEY"] = api_key
        self.log = folder / "server.log"
        logged = self.log.stat().st_size if self.log.exists() else 0
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        # Every worker must be serving before the load starts: connections opened
        # while only the first one is ready all stay with it (kept alive), and the
        # figures would be those of one worker whatever --workers says.
        workers = int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 1
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            with open(self.log, "rb") as handle:
                handle.seek(logged)
                ready = handle.read().count(b"dispatch-server ready:")
            try:
                if ready >= workers and run.http_get(self.port, "/health", timeout=1.0)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not serving with {workers} workers")
            time.sleep(0.02)

    def cpu(self) -> float:
        return sum(run.cpu_seconds(pid) for pid in [self.proc.pid, *run.children_of(self.proc.pid)])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


def postgres_cpu(database: PostgresServer) -> float:
    """CPU used so far by every process of the PostgreSQL cluster."""
    pid_file = database.data / "postmaster.pid"
    main = int(pid_file.read_text().split()[0])
    return sum(run.cpu_seconds(pid) for pid in [main, *run.children_of(main)])


def drive(server: Server, scenario: str, args: argparse.Namespace,
          database: PostgresServer | None, params: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    cpu0 = server.cpu()
    db0 = postgres_cpu(database) if database is not None else 0.0
    wall0 = time.monotonic()
    result = loadgen.run("127.0.0.1", server.port, scenario, api_key=server.api_key,
                         procs=2, conns=4, seconds=args.seconds, warmup=args.warmup,
                         params=params)
    wall = time.monotonic() - wall0
    labels = {name: {"rate": round(s.rate, 1), "p50_ms": round(s.p50_ms, 2),
                     "p99_ms": round(s.p99_ms, 2), "errors": s.errors}
              for name, s in result.labels.items()}
    return {"labels": labels,
            "server_cores": round((server.cpu() - cpu0) / wall, 2),
            "postgres_cores": round((postgres_cpu(database) - db0) / wall, 2)
            if database is not None else None,
            "errors": result.errors}


def load_database(database: PostgresServer, jobs: list[Any]) -> None:
    database.reset()
    uow = open_state(database.url)  # through the ports, as ``copy-state`` writes
    try:
        write_farm(uow, Farm(jobs=jobs), "the database")
    finally:
        uow.close()
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def embedded(folder: Path, jobs: list[Any], api_key: str) -> Server:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if jobs:
        run.write_state(folder / "server_state.json", jobs)
    return Server(folder, api_key)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup = 2.0, 0.5
    work = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    database = PostgresServer(durable=True).init()
    api_key = secrets.token_hex(16)
    results: dict[str, Any] = {}
    problems: list[str] = []

    def record(name: str, setup: str, figures: dict[str, Any]) -> None:
        results.setdefault(name, {})[setup] = figures
        for label, stats in figures["labels"].items():
            if stats["errors"]:
                problems.append(f"{name} {setup}: {label} had {stats['errors']} errors")
        problems.extend(f"{name} {setup}: {e}" for e in figures["errors"])
        main_label = next(iter(figures["labels"].values()), {})
        print(f"  {name:24s} {setup:12s} {main_label.get('rate', 0):8.0f}/s  "
              f"p50 {main_label.get('p50_ms', 0):6.2f}  p99 {main_label.get('p99_ms', 0):7.2f} ms"
              f"  server {figures['server_cores']:.2f} cores"
              + (f", postgres {figures['postgres_cores']:.2f}"
                 if figures["postgres_cores"] is not None else ""), file=sys.stderr)

    try:
        stored = run.make_jobs(10_000)
        sample = random.Random(1).sample([job.job_id for job in stored], 5_000)
        setups: list[tuple[str, int]] = [("embedded", 0)] + [(f"pg {n}w", n) for n in WORKERS]

        def measure(name: str, setup: str, workers: int, jobs: list[Any], scenario: str,
                    label: str, params: dict[str, Any] | None = None) -> None:
            """One server (embedded when ``workers`` is 0) preloaded with ``jobs``;
            ``label``'s figures first."""
            if workers == 0:
                server, db = embedded(work / "embedded", jobs, api_key), None
            else:
                load_database(database, jobs)
                server = Server(work, api_key, "--database-url", database.url,
                                "--workers", str(workers))
                db = database
            try:
                figures = drive(server, scenario, args, db, params)
                figures["labels"] = {label: figures["labels"].pop(label),
                                     **figures["labels"]}
                record(name, setup, figures)
            finally:
                server.stop()

        for scenario, name, label, params in (
                ("get", "GET /jobs/{id}", "GET /jobs/{id}", {"job_ids": sample}),
                ("submit", "POST /jobs/ (durable)", "POST /jobs/", None),
                ("cycle", "cycle", "cycle", None)):
            for setup, workers in setups:
                measure(name, setup, workers, stored, scenario, label, params)
        for n in (100, 100_000):
            pending = run.make_jobs(n, all_pending=True)
            for setup, workers in (("embedded", 0), ("pg 2w", 2)):
                measure(f"assign, {n:,} pending", setup, workers, pending, "assign",
                        "POST /assign_job/")
    finally:
        database.close()
        shutil.rmtree(work, ignore_errors=True)

    summary = summarise(results)
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    (out / "postgres.json").write_text(json.dumps(
        {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
         "quick": args.quick, "results": results, "summary": summary,
         "problems": problems}, indent=2))
    print(json.dumps(summary, indent=2))
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    def rate(name: str, setup: str) -> float:
        labels = results[name][setup]["labels"]
        return float(next(iter(labels.values()))["rate"])

    summary: dict[str, Any] = {}
    for name in ("GET /jobs/{id}", "POST /jobs/ (durable)", "cycle"):
        summary[name] = {setup: rate(name, setup) for setup in results[name]}
    reads = summary["GET /jobs/{id}"]
    summary["reads 2 workers / 1 worker"] = round(reads["pg 2w"] / reads["pg 1w"], 2)
    p99 = {n: results[f"assign, {n:,} pending"]["pg 2w"]["labels"]["POST /assign_job/"]["p99_ms"]
           for n in (100, 100_000)}
    summary["assign p99 ms (pg 2w)"] = p99
    summary["assign p99 100k / 100 (pg 2w)"] = round(p99[100_000] / p99[100], 2)
    return summary


if __name__ == "__main__":
    sys.exit(main())
