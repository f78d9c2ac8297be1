"""Chunked encoding against whole-file encoding (``make bench``; issue #23's Measure).

One 1280x720 clip with audio (default 120 s) goes to h264 twice in the same run, on a
real ``dispatch-server`` (embedded store) with real ``dispatch-engine`` processes, each
pinned to one core with ``taskset`` and each ffmpeg limited to one thread
(``--ffmpeg-threads 1``), so "one engine" is one core:

- whole: one engine, the job without ``chunk_seconds``;
- chunked: two engines, ``chunk_seconds`` 10.

Figures: each run's time from submission to ``completed``; the speed-up; the time from
the last chunk's completion to ``completed`` (stitch and verify) as a share of the
chunked run; planning time; the mean chunk time; PSNR of each output against the
source; and the model below for N engines:

    T(N) = plan + ceil(C / N) x chunk + stitch      (C chunks; transfer is inside chunk)
    speed-up(N) = T_whole / T(N)

    .venv/bin/python -m bench.chunked                 # 120 s clip, 10 s chunks
    .venv/bin/python -m bench.chunked --seconds 40    # quicker look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.chunked import clip_with_audio, streams
from tests.support.engine import Engine
from tests.support.files import download, upload
from tests.support.helpers import epoch, poll
from tests.support.server import Server

BENCH = Path(__file__).resolve().parent


def pinned(root: Path, server: Server, key: str, name: str, core: int) -> Engine:
    """An engine (and so each ffmpeg it starts) on one core, ffmpeg on one thread."""
    engine = Engine(root, server.url, key, name, "--codecs", "h264", "--ffmpeg-threads", "1",
                    keep_outputs=False, prefix=("taskset", "-c", str(core))).start()
    poll(lambda: server.request("GET", f"/engines/{name}").status_code == 200, 60,
         f"engine {name} registered")
    return engine


def psnr(output: Path, source: Path) -> float:
    result = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-i", str(output), "-i", str(source),
         "-lavfi", "[0:v][1:v]psnr", "-f", "null", "-"],
        capture_output=True, text=True, timeout=1800)
    match = re.search(r"PSNR .* average:([0-9.inf]+)", result.stderr)
    assert match, result.stderr[-2000:]
    return float(match.group(1))


def run_job(server: Server, source_url: str, chunk_seconds: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"source_url": source_url, "target_codec": "h264", "job_size": 1}
    if chunk_seconds:
        body["chunk_seconds"] = chunk_seconds
    response = server.request("POST", "/jobs/", json=body)
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]

    def finished() -> dict[str, Any] | None:
        job = server.request("GET", f"/jobs/{job_id}").json()
        return job if job["status"] in ("completed", "failed") else None

    job = poll(finished, 3600, f"job {job_id} finished", interval=0.25)
    assert job["status"] == "completed", job["error_message"]
    figures: dict[str, Any] = {"job_id": job_id,
                               "total_s": epoch(job["completed_at"]) - epoch(job["created_at"])}
    if chunk_seconds:
        listed = server.request("GET", f"/jobs/{job_id}/chunks").json()
        tasks = {task["kind"]: server.request("GET", f"/jobs/{task['job_id']}").json()
                 for task in listed["tasks"]}
        rows = [server.request("GET", f"/jobs/{row['job_id']}").json()
                for row in listed["chunks"]]
        every = [*rows, *tasks.values()]
        busy: dict[str, float] = {}
        for row in every:
            busy[row["assigned_engine"]] = busy.get(row["assigned_engine"], 0.0) + \
                epoch(row["completed_at"]) - epoch(row["assigned_at"])
        figures["busy_s"] = busy
        last_chunk = max(epoch(row["completed_at"]) for row in [*rows, tasks.get("audio")]
                         if row)
        figures.update(
            chunks=len(rows),
            engines=sorted({row["assigned_engine"] for row in rows}),
            plan_s=epoch(tasks["plan"]["completed_at"]) - epoch(job["created_at"]),
            chunk_mean_s=sum(epoch(r["completed_at"]) - epoch(r["assigned_at"])
                             for r in rows) / len(rows),
            stitch_s=epoch(job["completed_at"]) - last_chunk,
        )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=120, help="clip length")
    parser.add_argument("--chunk-seconds", type=int, default=10)
    args = parser.parse_args()
    key = secrets.token_hex(16)
    saved = {name: os.environ.pop(name) for name in list(os.environ)
             if name.startswith(("DISTCONV_", "AWS_"))}
    with tempfile.TemporaryDirectory(prefix="chunked-bench-") as tmp:
        root = Path(tmp)
        clip = clip_with_audio(root / "clip.mp4", args.seconds, size="1280x720")
        server = Server(root, key, "--state-file", str(root / "state.json")).start()
        engines: list[Engine] = []
        try:
            source = upload(server.url, server.headers, clip)["source_url"]
            solo = pinned(root, server, key, "solo", 0)
            engines.append(solo)
            whole = run_job(server, source, None)
            solo.stop()
            server.request("DELETE", "/engines/solo")
            engines += [pinned(root, server, key, name, core)
                        for core, name in enumerate(("c0", "c1"))]
            chunked = run_job(server, source, args.chunk_seconds)
            outputs = {name: download(server.url, server.headers, run["job_id"],
                                      root / f"{name}.mp4")
                       for name, run in (("whole", whole), ("chunked", chunked))}
            quality = {name: psnr(path, clip) for name, path in outputs.items()}
            frames = {name: streams(path)["video"]["packets"]
                      for name, path in outputs.items()}
        finally:
            for engine in engines:
                engine.stop()
            server.stop()
            os.environ.update(saved)

    speedup = whole["total_s"] / chunked["total_s"]
    stitch_share = chunked["stitch_s"] / chunked["total_s"]
    count = chunked["chunks"]

    def model(n: int) -> float:
        return whole["total_s"] / (chunked["plan_s"] + math.ceil(count / n) *
                                   chunked["chunk_mean_s"] + chunked["stitch_s"])

    print(f"chunked bench: {args.seconds} s 1280x720 clip with audio to h264, "
          f"1 core and 1 ffmpeg thread per engine")
    print(f"  whole file, 1 engine        {whole['total_s']:8.2f} s")
    print(f"  {count} chunks of {args.chunk_seconds} s, 2 engines {chunked['total_s']:8.2f} s"
          f"  (engines {', '.join(chunked['engines'])})")
    print(f"  speed-up                    {speedup:8.2f} x  (target >= 1.7)")
    print("  engines busy (assigned -> completed, every task) " + ", ".join(
        f"{name} {seconds:.1f} s" for name, seconds in sorted(chunked["busy_s"].items())))
    print(f"  planning                    {chunked['plan_s']:8.2f} s")
    print(f"  mean chunk (incl. transfer) {chunked['chunk_mean_s']:8.2f} s")
    print(f"  stitch + verify             {chunked['stitch_s']:8.2f} s = "
          f"{100 * stitch_share:.1f} % of the chunked run (target < 5 %)")
    print(f"  PSNR whole / chunked        {quality['whole']:.3f} / {quality['chunked']:.3f} dB"
          f"  (difference {quality['whole'] - quality['chunked']:+.3f}, target within 0.2)")
    print(f"  frames whole / chunked      {frames['whole']} / {frames['chunked']}")
    print("  model T(N) = plan + ceil(C/N) x chunk + stitch, "
          f"C = {count}: " + ", ".join(f"N={n}: {model(n):.1f}x" for n in (2, 4, 10, 100)))
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    (results / "chunked.json").write_text(json.dumps(
        {"whole": whole, "chunked": chunked, "speedup": speedup, "psnr": quality,
         "frames": frames, "stitch_share": stitch_share}, indent=1))
    ok = speedup >= 1.7 and stitch_share < 0.05 and \
        abs(quality["whole"] - quality["chunked"]) <= 0.2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
