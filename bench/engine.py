"""The engine's own cost (``make bench``, after bench.run): what ``dispatch-engine`` adds
to a job beyond ffmpeg's work, and the CPU it uses while ffmpeg runs.

Starts a real ``dispatch-server`` and one ``dispatch-engine`` (h264, default 5 s
heartbeat) on loopback, serves a lavfi clip over HTTP, and runs one job at a time:

- overhead = (completed_at - assigned_at, the server's times) - ffmpeg's wall time
  (the engine logs it per job): assignment answer, download, probe, starting ffmpeg,
  publishing the output and reporting;
- engine CPU while ffmpeg runs = the engine process's own utime+stime (/proc, children
  excluded) over the time its ffmpeg child is alive, in % of one core (target < 2 %).

    .venv/bin/python -m bench.engine            # 3 jobs of a 30 s 640x360 clip
    .venv/bin/python -m bench.engine --runs 1 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.support.engine import Engine, ffmpeg_children, file_server, make_clip
from tests.support.helpers import epoch, poll
from tests.support.server import Server

BENCH = Path(__file__).resolve().parent

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process itself (not its children)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def one_job(server: Server, engine: Engine, source_url: str) -> dict[str, float]:
    response = server.request("POST", "/jobs/", json={
        "source_url": source_url, "target_codec": "h264", "job_size": 1})
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    ffmpeg = poll(lambda: ffmpeg_children(engine.pid), 60, "ffmpeg started", interval=0.005)
    cpu_start, wall_start = cpu_seconds(engine.pid), time.monotonic()
    poll(lambda: not ffmpeg_children(engine.pid), 600, "ffmpeg done", interval=0.005)
    cpu_end, wall_end = cpu_seconds(engine.pid), time.monotonic()

    def completed() -> dict | None:
        job = server.request("GET", f"/jobs/{job_id}").json()
        return job if job["status"] == "completed" else None

    job = poll(completed, 60, "job completed")
    line = poll(lambda: re.search(rf"job {job_id} completed: .* ffmpeg ([0-9.]+) s",
                                  engine.output()), 10, "completion logged")
    ffmpeg_time = float(line.group(1))
    job_time = epoch(job["completed_at"]) - epoch(job["assigned_at"])
    return {"pid": float(ffmpeg[0]), "job_s": job_time, "ffmpeg_s": ffmpeg_time,
            "overhead_s": job_time - ffmpeg_time,
            "engine_cpu_pct": 100 * (cpu_end - cpu_start) / (wall_end - wall_start)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=30, help="clip length")
    args = parser.parse_args()
    key = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        root = Path(tmp)
        clips = root / "clips"
        clips.mkdir()
        make_clip(clips / "clip.mp4", args.seconds, size="640x360", source="testsrc2")
        server = Server(root, key).start()
        engine = Engine(root, server.url, key, "bench-engine", "--codecs", "h264",
                        "--heartbeat-interval", "5").start()
        try:
            poll(lambda: re.search(r"benchmark [0-9.]+ s recorded", engine.output()), 60,
                 "engine ready")
            idle_cpu, idle_wall = cpu_seconds(engine.pid), time.monotonic()
            time.sleep(5)  # a measurement window, not a wait for something to happen
            idle_pct = 100 * (cpu_seconds(engine.pid) - idle_cpu) / (time.monotonic() - idle_wall)
            with file_server(clips) as url:
                runs = [one_job(server, engine, f"{url}/clip.mp4") for _ in range(args.runs)]
        finally:
            engine.stop()
            server.stop()
    summary = {key: statistics.median(run[key] for run in runs)
               for key in ("job_s", "ffmpeg_s", "overhead_s", "engine_cpu_pct")}
    print(f"engine bench: {args.runs} job(s) of a {args.seconds} s 640x360 clip to h264, "
          "medians")
    print(f"  job (assigned -> completed)   {summary['job_s']:.3f} s")
    print(f"  ffmpeg                        {summary['ffmpeg_s']:.3f} s")
    print(f"  engine overhead               {summary['overhead_s']:.3f} s")
    print(f"  engine CPU while ffmpeg runs  {summary['engine_cpu_pct']:.2f} % of one core "
          "(target < 2 %)")
    print(f"  engine CPU idle (5 s)         {idle_pct:.2f} % of one core")
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    (results / "engine.json").write_text(json.dumps(
        {"median": summary, "idle_cpu_pct": idle_pct, "runs": runs}, indent=1))
    return 0 if summary["engine_cpu_pct"] < 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
