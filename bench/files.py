"""Files in and out (issue #21): upload and download throughput through the embedded
store and through SeaweedFS, beside a plain ``cp`` of the same file on the same disk,
and the server's CPU per GiB moved (``make bench``).

    .venv/bin/python -m bench.files               # a 1 GiB file, 3 rounds
    .venv/bin/python -m bench.files --mib 256 --rounds 1

Every side is measured the same way: the file read is in the page cache (written
just before), the file written is fsynced before the clock stops, and dirty pages
are flushed (``sync``) before each timing so one measurement does not pay for the
last one's writeback. So ``cp`` is ``cp SOURCE COPY && sync COPY`` (``cp`` alone,
a copy into the page cache, is printed beside it); an upload is every part streamed
from the file (64 MiB parts) and the completion, after which the store has fsynced
the object; a download is the GET streamed into a file, then fsynced, with requests
as dispatch-engine does it and again with curl. The client streams as our clients
do (the upload as dispatch-engine's parts, the download as its source). Figures are
the medians of the rounds, a ratio the median of each round's ratio to the cp + fsync
of the same round (a shared machine is noisy); the server's CPU is its worker's, per
GiB moved (the download's, per download).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from tests.support.seaweed import SeaweedS3
from tests.support.server import Server

ROOT = Path(__file__).resolve().parent.parent

MiB = 1 << 20


class _Slice:
    def __init__(self, path: Path, offset: int, size: int) -> None:
        self.handle = open(path, "rb")
        self.handle.seek(offset)
        self.left = self.size = size

    def __len__(self) -> int:
        return self.size

    def read(self, amount: int = -1) -> bytes:
        amount = self.left if amount < 0 else min(amount, self.left)
        data = self.handle.read(min(amount, MiB))
        self.left -= len(data)
        return data


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker(server: Server) -> int:
    assert server.proc is not None
    pid = server.proc.pid
    return int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


def copy(source: Path, target: Path, fsync: bool) -> float:
    os.sync()
    start = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    if fsync:
        subprocess.run(["sync", str(target)], check=True)
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


def upload(server: Server, source: Path) -> tuple[str, float, float]:
    """(source_url, seconds, seconds of the completion)."""
    size = source.stat().st_size
    os.sync()
    start = time.perf_counter()
    answer = server.request("POST", "/uploads", json={"filename": source.name,
                                                      "size": size}).json()
    parts, offset = [], 0
    for part in answer["parts"]:
        body = _Slice(source, offset, part["size"])
        sent = requests.put(part["url"], data=body, timeout=600)
        body.handle.close()
        assert sent.status_code == 200, sent.text
        parts.append({"part_number": part["part_number"],
                      "etag": sent.headers["ETag"].strip('"')})
        offset += part["size"]
    parts_sent = time.perf_counter()
    done = server.request("POST", f"/uploads/{answer['upload_id']}/complete",
                          json={"parts": parts}, timeout=600)
    assert done.status_code == 200, done.text
    end = time.perf_counter()
    return answer["source_url"], end - start, end - parts_sent


def download(server: Server, source_url: str, target: Path) -> tuple[float, float]:
    """(seconds with requests, as dispatch-engine downloads; seconds with curl)."""
    engine = f"bench-{secrets.token_hex(4)}"  # one per round: each holds its job
    server.request("POST", "/engines/heartbeat", json={"engine_id": engine})
    server.request("POST", "/jobs/", json={"source_url": source_url,
                                           "target_codec": "h264", "job_size": 1})
    url = server.request("POST", "/assign_job/", json={"engine_id": engine}).json()[
        "source_url"]
    os.sync()
    start = time.perf_counter()
    with requests.get(url, stream=True, timeout=600) as response, open(target, "wb") as out:
        for chunk in response.iter_content(MiB):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    seconds = time.perf_counter() - start
    target.unlink()
    os.sync()
    start = time.perf_counter()  # the same with curl, a client in C
    subprocess.run(["curl", "-sf", "-o", str(target), url], check=True)
    subprocess.run(["sync", str(target)], check=True)
    curl = time.perf_counter() - start
    target.unlink()
    return seconds, curl


def rounds_through(server: Server, source: Path, rounds: int) -> dict[str, list[float]]:
    """Seconds (and CPU seconds per GiB) of each round: cp + fsync, cp alone, the
    upload, the downloads, measured one after the other."""
    pid = worker(server)
    gib = source.stat().st_size / (1 << 30)
    out: dict[str, list[float]] = {"cp": [], "cache": [], "up": [], "complete": [],
                                   "down": [], "curl": [], "cpu_up": [], "cpu_down": []}
    for _ in range(rounds):
        out["cp"].append(copy(source, source.with_name("copy.bin"), True))
        out["cache"].append(copy(source, source.with_name("copy.bin"), False))
        cpu0 = cpu_seconds(pid)
        url, seconds, completion = upload(server, source)
        cpu1 = cpu_seconds(pid)
        out["up"].append(seconds)
        out["complete"].append(completion)
        out["cpu_up"].append((cpu1 - cpu0) / gib)
        down, curl = download(server, url, source.with_name("down.bin"))
        out["down"].append(down)
        out["curl"].append(curl)
        out["cpu_down"].append((cpu_seconds(pid) - cpu1) / gib / 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="file size in MiB (1024)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, medians shown (3)")
    parser.add_argument("--store", choices=("local", "s3", "both"), default="both")
    args = parser.parse_args()
    key = secrets.token_hex(16)
    results: dict[str, Any] = {}
    kinds = ("local", "s3") if args.store == "both" else (args.store,)
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        root = Path(folder)
        source = root / "source.bin"
        with open(source, "wb") as handle:
            block = os.urandom(MiB)
            for _ in range(args.mib):
                handle.write(block)
        for kind in kinds:
            weed = SeaweedS3(root / "weed").start() if kind == "s3" else None
            extra = weed.args() if weed else []
            server = Server(root, key, "--state-file", str(root / f"{kind}.json"),
                            *extra, env=weed.env() if weed else None).start()
            try:
                results[kind] = rounds_through(server, source, args.rounds)
            finally:
                server.stop()
                if weed is not None:
                    weed.stop()

    def rate(seconds: list[float]) -> float:
        return args.mib / statistics.median(seconds)

    def ratio(r: dict[str, list[float]], name: str) -> float:
        """The median of each round's ratio to that round's cp + fsync: the load of a
        shared machine changes less within a round than across rounds."""
        return statistics.median([cp / seconds
                                  for cp, seconds in zip(r["cp"], r[name], strict=True)])

    print(f"{args.mib} MiB file, medians of {args.rounds} rounds (ratios: to cp + fsync "
          "in the same round)")
    for kind, label in (("local", "embedded store"), ("s3", "SeaweedFS (S3)")):
        if kind not in results:
            continue
        r = results[kind]
        print(f"{label:16} cp + fsync {rate(r['cp']):5.0f} MiB/s (cp alone "
              f"{rate(r['cache']):.0f})  upload {rate(r['up']):5.0f} MiB/s "
              f"({ratio(r, 'up'):.2f}x)  download {rate(r['down']):5.0f} MiB/s "
              f"({ratio(r, 'down'):.2f}x; curl {rate(r['curl']):.0f}, "
              f"{ratio(r, 'curl'):.2f}x)  completion {statistics.median(r['complete']):.1f} s"
              f"  server CPU {statistics.median(r['cpu_up']):.2f} s/GiB up, "
              f"{statistics.median(r['cpu_down']):.2f} s/GiB down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
