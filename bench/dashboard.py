"""The dashboard's pages at 100, 10,000 and 100,000 stored jobs (``make bench``).

Starts the real ``dispatch-server`` preloaded as bench.run does (same state files:
90 % completed, 8 % pending, the rest failed or cancelled), signs in with a session
cookie made with the server's dashboard secret, and drives each page with
bench.loadgen (8 keep-alive connections, closed loop). Target: the default jobs
page and the overview at 100,000 jobs within 1.2x the latency at 100 (p50).

    .venv/bin/python -m bench.dashboard            # 3 runs, medians
    .venv/bin/python -m bench.dashboard --quick    # 1 run, 1.5 s measurements
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from bench import run  # state files, server start, the load driver
from dispatch.http.auth import key_fingerprint

# (row, path at n stored jobs, whether the 1.2x target applies). Each page shows 50
# rows at every size, so the figures compare the same rendering work.
PAGES = (
    ("overview", lambda n: "/ui/", True),
    ("jobs, newest 50", lambda n: "/ui/jobs", True),
    ("jobs, status=completed", lambda n: "/ui/jobs?status=completed", True),
    ("jobs, a middle page", lambda n: f"/ui/jobs?offset={n // 2}", True),
    ("jobs, text search (scan)", lambda n: "/ui/jobs?q=0042", False),
    ("jobs, codec filter (scan)", lambda n: "/ui/jobs?codec=vp9", False),
)
TARGET = 1.2


def session_cookie(secret: str, api_key: str) -> str:
    """The cookie a sign-in with ``api_key`` sets, signed as the server signs it."""
    app = Flask("bench")
    app.secret_key = secret
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    assert serializer is not None
    value = serializer.dumps({"_permanent": True, "key": key_fingerprint(api_key)})
    return f"distconv_ui={value}"


def measure(bench: run.Bench, sizes: list[int], run_number: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    secret = secrets.token_hex(32)
    cookie = session_cookie(secret, bench.api_key)
    for n in sizes:
        folder = bench.cache.fresh_dir(n)
        server = run.start_dispatch(folder, bench.api_key, env={"DISTCONV_UI_SECRET": secret})
        try:
            for row, make_path, _ in PAGES:
                path = make_path(n)
                bench.log(f"  run {run_number} n={n:,}: GET {path}")
                result = bench.drive(server, "page", params={"path": path, "cookie": cookie},
                                     seed=run_number)
                figures = result["labels"][f"GET {path}"]
                if set(figures["statuses"]) != {200}:
                    bench.problems.append(f"GET {path} at {n}: statuses {figures['statuses']}")
                out.setdefault(row, {})[n] = {
                    "rate": figures["rate"], "p50_ms": figures["p50_ms"],
                    "p99_ms": figures["p99_ms"],
                    "server_cpu_us_per_request": result["server_cpu_us_per_request"]}
        finally:
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=list(run.SIZES))
    parser.add_argument("--quick", action="store_true", help="1 run, 1.5 s measurements")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--out", default=str(run.BENCH / "results" / "dashboard.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.seconds, args.warmup = 1, 1.5, 0.5
    args.procs, args.conns = 2, 4  # what Bench.drive reads
    workdir = Path(tempfile.mkdtemp(prefix="dispatch-bench-ui-"))
    bench = run.Bench(args, workdir)
    try:
        runs = [measure(bench, args.sizes, number) for number in range(1, args.runs + 1)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def med(row: str, n: int, key: str) -> float:
        return statistics.median(r[row][n][key] for r in runs)

    small, big = min(args.sizes), max(args.sizes)
    print(f"dashboard pages: {args.runs} run(s), {args.seconds:g} s each, medians, "
          f"8 connections; per size: req/s, p50 ms, server CPU us/request; ratios "
          f"{big:,} / {small:,} jobs (target <= {TARGET:g}: on p50, and on CPU, which a busy "
          "machine disturbs less)")
    head = f"{'page':26s} " + " ".join(f"{f'{n:,} jobs':>20s}" for n in args.sizes) \
        + f" {'p50 x':>6s} {'CPU x':>6s}"
    print(head)
    print("-" * len(head))
    missed = False
    for row, _, targeted in PAGES:
        cells = " ".join(f"{med(row, n, 'rate'):5.0f} {med(row, n, 'p50_ms'):6.1f} "
                         f"{med(row, n, 'server_cpu_us_per_request'):7.0f}"
                         for n in args.sizes)
        p50 = med(row, big, "p50_ms") / med(row, small, "p50_ms")
        cpu = med(row, big, "server_cpu_us_per_request") \
            / med(row, small, "server_cpu_us_per_request")
        if targeted:
            mark = f"  p50 {'PASS' if p50 <= TARGET else 'MISS'}, CPU " \
                   f"{'PASS' if cpu <= TARGET else 'MISS'}"
            missed |= cpu > TARGET
        else:
            mark = "  (scans every job: no target)"
        print(f"{row:26s} {cells} {p50:6.2f} {cpu:6.2f}{mark}")
    print(f"other load on the machine: {statistics.median(bench.other_cores):.2f} cores "
          "(median over the measurements)")
    for problem in bench.problems:
        print(f"PROBLEM: {problem}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": runs, "sizes": args.sizes}, indent=1) + "\n")
    return 1 if bench.problems or missed else 0


if __name__ == "__main__":
    sys.exit(main())
