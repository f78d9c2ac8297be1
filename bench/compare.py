"""Two source trees measured alternately in one run on this machine: each endpoint's
``bench.run`` req/s normalised to the bare-Flask baseline of the same run, NEW over
OLD, flagged when NEW is more than 5 % slower; and ``bench.service_ops`` side by side.

Each tree is a checkout with its own ``.venv``, prepared by the caller, e.g.

    git worktree add ../old 1cc07a3 && make -C ../old .venv/.installed

Every round runs OLD then NEW, each with its own interpreter and the tree as working
directory: ``-m bench.run --quick --out FILE`` (``bench/run.py`` in a tree from before
``bench`` was a package), then its service_ops. Only one benchmark runs at a time.

    .venv/bin/python -m bench.compare ../old .                 # 2 rounds of --quick
    .venv/bin/python -m bench.compare ../old . --rounds 3 --run-args "--runs 1"

Exits 1 when an endpoint or a service operation is more than 5 % slower in NEW, or a
run failed. Writes every figure to ``bench/results/compare.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
TOLERANCE = 0.05  # the issue's "no endpoint slower by more than 5 %"


@dataclass
class Tree:
    label: str  # OLD or NEW
    path: Path

    @property
    def python(self) -> Path:
        return self.path / ".venv" / "bin" / "python"

    @property
    def packaged(self) -> bool:
        """Whether this tree runs its benchmarks as ``python -m bench.X``; older trees
        run ``python bench/X.py`` (they put the repository on sys.path themselves)."""
        return (self.path / "bench" / "__init__.py").exists()

    def command(self, script: str, *args: str) -> list[str]:
        if self.packaged:
            return [str(self.python), "-m", f"bench.{script}", *args]
        return [str(self.python), f"bench/{script}.py", *args]

    def check(self) -> None:
        for needed in (self.python, self.path / "bench" / "run.py",
                       self.path / "bench" / "service_ops.py"):
            if not needed.exists():
                raise SystemExit(f"{self.label} tree {self.path}: {needed} is missing "
                                 "(a checkout with `make .venv/.installed` run in it)")


def child_env() -> dict[str, str]:
    """The caller's environment, less what would make a tree import another's code."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_bench(tree: Tree, run_args: list[str], out: Path, logfile: Path) -> dict[str, Any]:
    """One ``bench.run`` in ``tree``; its JSON document. A run that exits 1 because a
    request failed still wrote its figures: they are kept, the failure is reported."""
    command = tree.command("run", *run_args, "--out", str(out))
    started = time.monotonic()
    with open(logfile, "wb") as handle:
        code = subprocess.run(command, cwd=tree.path, env=child_env(), stdout=handle,
                              stderr=subprocess.STDOUT).returncode
    log(f"    {tree.label} bench.run: exit {code} in {time.monotonic() - started:.0f} s "
        f"(output in {logfile})")
    if not out.exists():
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{tree.label} {' '.join(command)} wrote no results:\n{tail}")
    document: dict[str, Any] = json.loads(out.read_text())
    document["exit_code"] = code
    return document


OPS_FIGURE = re.compile(r"(\S+) ([0-9.]+) us")


def run_service_ops(tree: Tree) -> dict[str, float]:
    """``bench.service_ops`` in ``tree``: microseconds per operation, by name (it prints
    one line, ``submit 12.3 us  describe 4.5 us  assign+complete 30.1 us``)."""
    done = subprocess.run(tree.command("service_ops"), cwd=tree.path, env=child_env(),
                          capture_output=True, text=True)
    figures = {name: float(us) for name, us in OPS_FIGURE.findall(done.stdout)}
    if done.returncode != 0 or not figures:
        raise RuntimeError(f"{tree.label} service_ops exited {done.returncode}: "
                           f"{(done.stdout + done.stderr)[-1500:]}")
    log(f"    {tree.label} service_ops: {done.stdout.strip()}")
    return figures


def normalised(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, float]]:
    """(endpoint row, stored jobs) -> req/s and req/s over that run's bare-Flask req/s
    for the same workload."""
    out = {}
    for row, entry in document["table"].items():
        bare = entry["baseline"]["rate"]
        for n, figures in entry["sizes"].items():
            rate = figures["rate"]
            if rate is None or not bare:
                continue
            out[(row, str(n))] = {"rate": rate, "bare": bare, "normalised": rate / bare}
    return out


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def reduce(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds for each tree; NEW/OLD per endpoint and per operation."""
    per_tree: dict[str, dict[tuple[str, str], list[dict[str, float]]]] = {"OLD": {}, "NEW": {}}
    ops: dict[str, dict[str, list[float]]] = {"OLD": {}, "NEW": {}}
    startup: dict[str, dict[str, list[float]]] = {"OLD": {}, "NEW": {}}
    keys: list[tuple[str, str]] = []
    for one in rounds:
        for label in ("OLD", "NEW"):
            for key, figures in normalised(one[label]["bench"]).items():
                per_tree[label].setdefault(key, []).append(figures)
                if key not in keys:
                    keys.append(key)
            for name, micros in one[label]["service_ops"].items():
                ops[label].setdefault(name, []).append(micros)
            for n, seconds in one[label]["bench"]["summary"]["startup_seconds"].items():
                if seconds is not None:
                    startup[label].setdefault(n, []).append(seconds)

    endpoints = []
    for row, n in keys:
        entry: dict[str, Any] = {"endpoint": row, "jobs": int(n)}
        for label in ("OLD", "NEW"):
            runs = per_tree[label].get((row, n), [])
            entry[label] = {"rate": median([r["rate"] for r in runs]),
                            "bare": median([r["bare"] for r in runs]),
                            "normalised": median([r["normalised"] for r in runs]),
                            "normalised_each": [r["normalised"] for r in runs]}
        old, new = entry["OLD"]["normalised"], entry["NEW"]["normalised"]
        entry["new_over_old"] = new / old if old and new is not None else None
        entry["slower"] = (entry["new_over_old"] is not None
                           and entry["new_over_old"] < 1 - TOLERANCE)
        # Whether the rounds' ranges of norm overlap: a gap smaller than the spread
        # between rounds of the same tree (a busy machine) may be noise.
        each_old, each_new = entry["OLD"]["normalised_each"], entry["NEW"]["normalised_each"]
        entry["ranges_overlap"] = bool(each_old and each_new) and (
            min(each_new) <= max(each_old) and min(each_old) <= max(each_new))
        endpoints.append(entry)

    operations: list[dict[str, Any]] = []
    for name in dict.fromkeys([*ops["OLD"], *ops["NEW"]]):  # in the order printed
        # service_ops already reports the best of 5 rounds; keep the best again
        old_us, new_us = min(ops["OLD"].get(name, [0.0])), min(ops["NEW"].get(name, [0.0]))
        ratio = new_us / old_us if old_us and new_us else None
        operations.append({"operation": name, "OLD_us": old_us, "NEW_us": new_us,
                           "new_over_old": ratio,
                           "slower": ratio is not None and ratio > 1 + TOLERANCE})
    other = {label: [r[label]["bench"]["meta"].get("other_cpu_cores_median")
                     for r in rounds if "meta" in r[label]["bench"]] for label in ("OLD", "NEW")}
    starts = {n: {label: median(startup[label].get(n, [])) for label in ("OLD", "NEW")}
              for n in sorted(startup["OLD"].keys() | startup["NEW"].keys(), key=int)}
    return {"endpoints": endpoints, "service_ops": operations, "startup_seconds": starts,
            "other_load_cores": other}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(result: dict[str, Any], trees: dict[str, Tree], rounds: int,
           run_args: list[str]) -> str:
    lines = [f"OLD {trees['OLD'].path}", f"NEW {trees['NEW'].path}"]
    if not result["endpoints"]:
        lines += [f"{rounds} round(s), alternating OLD, NEW; service_ops only"]
    else:
        lines += [f"{rounds} round(s), alternating OLD, NEW; bench.run {' '.join(run_args)}; "
                  "medians over rounds",
                  "norm = the endpoint's req/s / the bare Flask app's req/s for the same "
                  "workload in the same run; NEW/OLD of norm, flagged below "
                  f"{1 - TOLERANCE:.2f}; (rounds overlap): some round of OLD and some "
                  "of NEW agree, so the gap may be noise (more --rounds)", ""]
        head = (f"{'endpoint':30s} {'jobs':>7s} | {'OLD req/s':>9s} {'norm':>5s} | "
                f"{'NEW req/s':>9s} {'norm':>5s} | {'NEW/OLD':>7s}")
        lines += [head, "-" * len(head)]
    previous = None
    for e in result["endpoints"]:
        name = e["endpoint"] if e["endpoint"] != previous else ""
        previous = e["endpoint"]
        flag = ""
        if e["slower"]:
            flag = "  SLOWER" + (" (rounds overlap)" if e["ranges_overlap"] else "")
        lines.append(f"{name:30s} {e['jobs']:>7,d} | {fmt(e['OLD']['rate'], '9.0f')} "
                     f"{fmt(e['OLD']['normalised'], '5.2f')} | {fmt(e['NEW']['rate'], '9.0f')} "
                     f"{fmt(e['NEW']['normalised'], '5.2f')} | "
                     f"{fmt(e['new_over_old'], '7.3f')}{flag}")
    if result["startup_seconds"]:
        # Other processes' CPU during each run: above ~0.25 cores the figures are noisy.
        lines.append("")
        lines.append("other load (cores, per run): " + "; ".join(
            f"{label} " + ", ".join(fmt(c, ".2f") for c in cores)
            for label, cores in result["other_load_cores"].items()))
        lines.append("start to serving /health (s): " + ", ".join(
            f"{int(n):,} jobs OLD {fmt(s['OLD'], '.2f')} NEW {fmt(s['NEW'], '.2f')}"
            for n, s in result["startup_seconds"].items()))
    lines.append("")
    head = f"{'service operation':18s} {'OLD us':>8s} {'NEW us':>8s} {'NEW/OLD':>8s}"
    lines += [head, "-" * len(head)]
    for op in result["service_ops"]:
        flag = "  SLOWER" if op["slower"] else ""
        lines.append(f"{op['operation']:18s} {op['OLD_us']:8.1f} {op['NEW_us']:8.1f} "
                     f"{fmt(op['new_over_old'], '8.3f')}{flag}")
    slower = [f"{e['endpoint']} at {e['jobs']:,}" for e in result["endpoints"] if e["slower"]]
    slower += [op["operation"] for op in result["service_ops"] if op["slower"]]
    lines.append("")
    lines.append(f"more than {TOLERANCE:.0%} slower in NEW: " + (", ".join(slower) or "none"))
    for problem in result["problems"]:
        lines.append(f"PROBLEM: {problem}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the tree before (a checkout with .venv)")
    parser.add_argument("new", type=Path, help="the tree after")
    parser.add_argument("--rounds", type=int, default=2, help="OLD, NEW pairs (default 2)")
    parser.add_argument("--run-args", default="--quick",
                        help='arguments for bench.run (default "--quick"; e.g. '
                        '"--quick --sizes 100,10000" or "--runs 1")')
    parser.add_argument("--no-http", action="store_true",
                        help="service_ops only (seconds, not minutes)")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "compare.json")
    args = parser.parse_args(argv)
    trees = {"OLD": Tree("OLD", args.old.resolve()), "NEW": Tree("NEW", args.new.resolve())}
    for tree in trees.values():
        tree.check()
    run_args = shlex.split(args.run_args)
    workdir = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    empty_bench: dict[str, Any] = {"table": {}, "summary": {"startup_seconds": {}}}
    rounds: list[dict[str, Any]] = []
    problems: list[str] = []
    for number in range(1, args.rounds + 1):
        one: dict[str, Any] = {}
        for label in ("OLD", "NEW"):
            tree = trees[label]
            log(f"round {number}/{args.rounds}: {label} ({tree.path})")
            document = empty_bench
            if not args.no_http:
                out = workdir / f"run-{number}-{label}.json"
                document = run_bench(tree, run_args, out, workdir / f"run-{number}-{label}.log")
                if document["exit_code"] != 0:
                    problems.append(f"round {number} {label}: bench.run exited "
                                    f"{document['exit_code']}: "
                                    + "; ".join(document["meta"].get("problems", [])[:3]))
            one[label] = {"bench": document, "service_ops": run_service_ops(tree)}
        rounds.append(one)
    result = reduce(rounds)
    result["problems"] = problems
    print(render(result, trees, args.rounds, run_args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(
        {"old": str(trees["OLD"].path), "new": str(trees["NEW"].path),
         "rounds": args.rounds, "run_args": run_args, **result,
         "raw": [{label: {"meta": r[label]["bench"].get("meta"),
                          "table": r[label]["bench"]["table"],
                          "summary": r[label]["bench"]["summary"],
                          "service_ops": r[label]["service_ops"]}
                  for label in ("OLD", "NEW")} for r in rounds]},
        indent=1, default=str) + "\n")
    if args.no_http:
        workdir.rmdir()  # nothing was logged
        log(f"wrote {args.out}")
    else:
        log(f"wrote {args.out}; bench.run's output in {workdir}")
    slower = any(e["slower"] for e in result["endpoints"]) or any(
        op["slower"] for op in result["service_ops"])
    return 1 if slower or problems else 0


if __name__ == "__main__":
    sys.exit(main())
