"""Files in and out (issue #21): upload and download throughput through the embedded
store and through SeaweedFS, beside a plain ``cp`` of the same file on the same disk,
and the server's CPU per GiB moved (``make bench``).

    .venv/bin/python -m bench.files            # a 1 GiB file
    .venv/bin/python -m bench.files --mib 256  # a quicker run

The client streams each part from the file (64 MiB parts) and the download to a
file, as a real client would; "upload" includes the completion (the store joins the
parts into the object, which the local store does as a second copy on disk).
"""

from __future__ import annotations

import argparse
import os
import secrets
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


def through(server: Server, source: Path, target: Path) -> dict[str, float]:
    size = source.stat().st_size
    pid = worker(server)
    cpu0, start = cpu_seconds(pid), time.perf_counter()
    upload = server.request("POST", "/uploads", json={"filename": source.name,
                                                      "size": size}).json()
    parts, offset = [], 0
    for part in upload["parts"]:
        body = _Slice(source, offset, part["size"])
        answer = requests.put(part["url"], data=body, timeout=600)
        body.handle.close()
        assert answer.status_code == 200, answer.text
        parts.append({"part_number": part["part_number"],
                      "etag": answer.headers["ETag"].strip('"')})
        offset += part["size"]
    parts_sent = time.perf_counter() - start
    done = server.request("POST", f"/uploads/{upload['upload_id']}/complete",
                          json={"parts": parts}, timeout=600)
    assert done.status_code == 200, done.text
    uploaded, cpu1 = time.perf_counter() - start, cpu_seconds(pid)
    server.request("POST", "/engines/heartbeat", json={"engine_id": "bench"})
    server.request("POST", "/jobs/", json={"source_url": upload["source_url"],
                                           "target_codec": "h264", "job_size": 1})
    url = server.request("POST", "/assign_job/", json={"engine_id": "bench"}).json()[
        "source_url"]
    start = time.perf_counter()
    with requests.get(url, stream=True, timeout=600) as response, open(target, "wb") as out:
        for chunk in response.iter_content(MiB):
            out.write(chunk)
    downloaded, cpu2 = time.perf_counter() - start, cpu_seconds(pid)
    gib = size / (1 << 30)
    return {"upload_mib_s": size / MiB / uploaded, "parts_mib_s": size / MiB / parts_sent,
            "complete_s": uploaded - parts_sent, "download_mib_s": size / MiB / downloaded,
            "upload_cpu_s_per_gib": (cpu1 - cpu0) / gib,
            "download_cpu_s_per_gib": (cpu2 - cpu1) / gib}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="file size in MiB (1024)")
    args = parser.parse_args()
    key = secrets.token_hex(16)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=ROOT / "bench") as folder:
        root = Path(folder)
        source = root / "source.bin"
        with open(source, "wb") as handle:
            block = os.urandom(MiB)
            for _ in range(args.mib):
                handle.write(block)
        start = time.perf_counter()
        subprocess.run(["cp", str(source), str(root / "copy.bin")], check=True)
        results["cp_mib_s"] = args.mib / (time.perf_counter() - start)
        (root / "copy.bin").unlink()
        for kind in ("local", "s3"):
            weed = SeaweedS3(root / "weed").start() if kind == "s3" else None
            extra = weed.args() if weed else []
            server = Server(root, key, "--state-file", str(root / f"{kind}.json"),
                            *extra, env=weed.env() if weed else None).start()
            try:
                results[kind] = through(server, source, root / f"{kind}.out")
            finally:
                server.stop()
                if weed is not None:
                    weed.stop()
            (root / f"{kind}.out").unlink()
    cp = results["cp_mib_s"]
    print(f"{args.mib} MiB file; cp on the same disk: {cp:.0f} MiB/s")
    for kind, label in (("local", "embedded store"), ("s3", "SeaweedFS (S3)")):
        r = results[kind]
        print(f"{label:16} upload {r['upload_mib_s']:6.0f} MiB/s ({r['upload_mib_s'] / cp:.2f}x cp)"
              f"  download {r['download_mib_s']:6.0f} MiB/s ({r['download_mib_s'] / cp:.2f}x cp)"
              f"  (parts {r['parts_mib_s']:.0f} MiB/s, completion {r['complete_s']:.1f} s)"
              f"  server CPU {r['upload_cpu_s_per_gib']:.2f} s/GiB up, "
              f"{r['download_cpu_s_per_gib']:.2f} s/GiB down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
