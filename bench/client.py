"""The client's own cost (issue #22): ``distconv`` moving a file through the embedded
store beside ``curl`` doing the same requests, and ``distconv --version``'s start-up.

    .venv/bin/python -m bench.client               # 1 GiB, 5 runs of each, alternating
    .venv/bin/python -m bench.client --mib 256 --runs 3
    .venv/bin/python -m bench.client --before /tmp/old  # also an older checkout's client

Upload: ``distconv submit FILE --codec h264 --json`` (the file's SHA-256, POST
/uploads, each part PUT, the completion, POST /jobs/) beside ``openssl dgst -sha256``
(coreutils' sha256sum is 3x slower here) and ``curl`` making the same requests (the
parts cut beforehand, untimed; one curl process sends them all over one connection).
Each run changes the file's first bytes, so the store never holds its content
already. Download: ``distconv download JOB -o FILE`` (checked against the job's size
and SHA-256, fsynced, renamed) beside ``curl -L -o FILE`` and ``sync FILE``, and
beside ``curl | tee FILE | openssl dgst -sha256``. Wall and CPU time of the processes
(CPU: user + system of the process and what it waited for), medians; the server is
the same for both and does the same work.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dispatch.domain.objects import part_size_for, part_sizes
from tests.support.server import Server

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MiB = 1 << 20
PART_MB = 64  # the server's default upload_part_mb


def children_cpu() -> float:
    """CPU seconds (user + system) of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str] | str, **kwargs: Any) -> tuple[float, float]:
    """Wall and CPU seconds of ``command`` (and of the processes it waited for)."""
    cpu, start = children_cpu(), time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, **kwargs)
    return time.perf_counter() - start, children_cpu() - cpu


def stored_output(server: Server, source: Path) -> str:
    """A completed job whose output (``source``'s bytes) is in the server's store,
    made as an engine makes one; returns its id."""
    server.request("POST", "/engines/heartbeat", json={"engine_id": "bench"})
    job_id = server.request("POST", "/jobs/", json={
        "source_url": "http://example.com/source.mp4", "target_codec": "h264",
        "job_size": 1}).json()["job_id"]
    server.request("POST", "/assign_job/", json={"engine_id": "bench"})
    size = source.stat().st_size
    upload = server.request("POST", f"/jobs/{job_id}/output_upload", json={
        "engine_id": "bench", "size": size, "extension": "mp4"}).json()
    parts, offset = [], 0
    for part in upload["parts"]:
        with open(source, "rb") as handle:
            handle.seek(offset)
            answer = server.session.put(part["url"], data=handle.read(part["size"]),
                                        timeout=600)
        parts.append({"part_number": part["part_number"],
                      "etag": answer.headers["ETag"].strip('"')})
        offset += part["size"]
    done = server.request("POST", f"/jobs/{job_id}/complete", timeout=600, json={
        "engine_id": "bench", "output_url": upload["source_url"],
        "upload_id": upload["upload_id"], "parts": parts, "size": size})
    assert done.status_code == 200, done.text
    return str(job_id)


def cut_parts(source: Path, folder: Path, part_mb: int) -> None:
    """``source`` cut into the server's parts (files 1, 2, ...) for curl: untimed."""
    size = source.stat().st_size
    with open(source, "rb") as handle:
        for number, part in enumerate(part_sizes(size, part_size_for(size, part_mb * MiB)), 1):
            with open(folder / str(number), "wb") as out:
                out.write(handle.read(part))


def upload_with_curl(server: Server, source: Path, folder: Path, key: str) -> None:
    """openssl's SHA-256, POST /uploads, every part with one curl, complete, POST /jobs/."""
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-r", str(source)], check=True,
                            capture_output=True, text=True).stdout.split()[0]
    created = json.loads(subprocess.run(
        ["curl", "-sSf", "-H", key, "-H", "Content-Type: application/json", "-d",
         json.dumps({"filename": source.name, "size": source.stat().st_size,
                     "sha256": digest}), f"{server.url}/uploads"],
        check=True, capture_output=True).stdout)
    pairs: list[str] = []
    for part in created["parts"]:
        pairs += ["-T", str(folder / str(part["part_number"])), part["url"], "-o", "/dev/null"]
    # No "Expect: 100-continue" (curl waits up to 1 s per part for the interim answer).
    etags = subprocess.run(["curl", "-sSf", "-H", "Expect:", "-w", "%header{etag}\n",
                            *pairs], check=True, capture_output=True, text=True).stdout
    parts = [{"part_number": number, "etag": etag.strip().strip('"')}
             for number, etag in enumerate(etags.split(), 1)]
    subprocess.run(["curl", "-sSf", "-o", "/dev/null", "-H", key, "-H",
                    "Content-Type: application/json", "-d", json.dumps({"parts": parts}),
                    f"{server.url}/uploads/{created['upload_id']}/complete"], check=True)
    subprocess.run(["curl", "-sSf", "-o", "/dev/null", "-H", key, "-H",
                    "Content-Type: application/json", "-d", json.dumps({
                        "source_url": created["source_url"], "target_codec": "h264",
                        "job_size": 1}), f"{server.url}/jobs/"], check=True)


def refresh(source: Path, folder: Path | None) -> None:
    """New content (its first 32 bytes), in the file and in the first cut part."""
    head = os.urandom(32)
    for path in [source] + ([folder / "1"] if folder is not None else []):
        with open(path, "r+b") as handle:
            handle.write(head)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="file size in MiB (1024)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each (5)")
    parser.add_argument("--skip-upload", action="store_true")
    parser.add_argument("--before", metavar="TREE", help="also time the distconv of this "
                        "checkout (its dispatch package first on PYTHONPATH), alternately")
    args = parser.parse_args()
    key = secrets.token_hex(16)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DISTCONV_")},
           "DISTCONV_API_KEY": key, "HOME": "/nonexistent"}
    times: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}

    def record(name: str, measured: tuple[float, float]) -> None:
        times.setdefault(name, []).append(measured[0])
        cpus.setdefault(name, []).append(measured[1])
        print(f"  {name:34} {measured[0]:6.2f} s, CPU {measured[1]:5.2f} s", flush=True)

    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        root = Path(folder)
        source = root / "source.mp4"
        with open(source, "wb") as handle:
            for _ in range(args.mib):
                handle.write(os.urandom(MiB))
        server = Server(root, key, "--state-file", str(root / "state.json")).start()
        env["DISTCONV_SERVER"] = server.url
        objects = root / "files" / "objects"
        try:
            job_id = stored_output(server, source)
            output = f"{server.url}/jobs/{job_id}/output"
            out = root / "out.mp4"
            for run in range(args.runs):
                print(f"run {run + 1}", flush=True)
                record("distconv download", timed(
                    [str(BIN / "distconv"), "download", job_id, "-o", str(out), "--json"],
                    env=env))
                out.unlink()
                if args.before:
                    record("distconv download (before)", timed(
                        [str(BIN / "distconv"), "download", job_id, "-o", str(out),
                         "--json"], env={**env, "PYTHONPATH": args.before}))
                    out.unlink()
                record("curl -o + sync", timed(
                    f"curl -sSfL -H 'X-API-Key: {key}' -o {out} {output} && sync {out}",
                    shell=True))
                out.unlink()
                record("curl | tee | openssl sha256 + sync", timed(
                    f"curl -sSfL -H 'X-API-Key: {key}' {output} | tee {out} | "
                    "openssl dgst -sha256"
                    f" && sync {out}", shell=True))
                out.unlink()
            if not args.skip_upload:
                parts = root / "parts"
                parts.mkdir()
                cut_parts(source, parts, PART_MB)
                header = f"X-API-Key: {key}"
                for run in range(args.runs):
                    print(f"upload run {run + 1}", flush=True)
                    refresh(source, None)
                    record("distconv submit (upload)", timed(
                        [str(BIN / "distconv"), "submit", str(source), "--codec", "h264",
                         "--json"], env=env))
                    if args.before:
                        refresh(source, None)
                        record("distconv submit (upload, before)", timed(
                            [str(BIN / "distconv"), "submit", str(source), "--codec",
                             "h264", "--json"], env={**env, "PYTHONPATH": args.before}))
                    refresh(source, parts)
                    cpu, start = children_cpu(), time.perf_counter()
                    upload_with_curl(server, source, parts, header)
                    record("openssl sha256 + curl (upload)",
                           (time.perf_counter() - start, children_cpu() - cpu))
                    for stored in (objects / "sources").glob("*/*"):
                        stored.unlink()  # room on the disk; the jobs are never run
        finally:
            server.stop()
    start_up = [timed([str(BIN / "distconv"), "--version"])[0] for _ in range(20)]
    print(f"\n{args.mib} MiB through the embedded store, medians of {args.runs}:")
    for name, values in times.items():
        print(f"  {name:34} {statistics.median(values):6.2f} s  "
              f"(min {min(values):.2f}, max {max(values):.2f}), "
              f"CPU {statistics.median(cpus[name]):.2f} s")
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"  download: distconv / curl -o = "
          f"{medians['distconv download'] / medians['curl -o + sync']:.2f}x")
    if not args.skip_upload:
        ratio = medians["distconv submit (upload)"] / medians["openssl sha256 + curl (upload)"]
        print(f"  upload: distconv / (openssl sha256 + curl) = {ratio:.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores)")
    print(f"distconv --version: {statistics.mean(start_up) * 1000:.0f} ms mean of 20 "
          f"({min(start_up) * 1000:.0f}-{max(start_up) * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
