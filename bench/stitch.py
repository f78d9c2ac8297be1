"""What stitching and verifying cost against a chunked job's encode (issue 23: the
stitch and its verification should take under 5 % of the job).

Runs the engine's tasks in-process (plan, 10 s chunks, audio, stitch) on a 1280x720
lavfi clip with a sine track, served over HTTP with ``Range``, on one core (affinity)
with one encoder thread, as one engine of the issue's benchmark would; the server is
the recording stand-in of the tests. Prints each step's time (a chunk's includes the
decode check of its output), the parts of the stitch (packet check, decode at the
joins; and what a whole decode of the output, no longer the stitch's, would cost) and
the stitch's share of the job on ``--engines`` engines (chunk time / engines, the
ideal spread).

    .venv/bin/python -m bench.stitch                 # 120 s clip, ~6 minutes
    .venv/bin/python -m bench.stitch --seconds 30
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from dispatch.engine import media
from dispatch.engine.capabilities import Capabilities, Encoder
from tests.support.chunks import assignment, chunk_tasks, completed, engine, make_source
from tests.support.ranges import range_server

ONE_THREAD = Encoder("libx264", (), ("-pix_fmt", "yuv420p", "-preset", "medium", "-crf", "23",
                                     "-threads", "1"))


def timed(action: Callable[..., object], *args: object) -> float:
    started = time.monotonic()
    action(*args)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--chunk-seconds", type=int, default=10)
    parser.add_argument("--engines", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stitch-") as temp:
        folder = Path(temp)
        started = time.monotonic()
        make_source(folder / "source.mp4", args.seconds, size="1280x720")
        print(f"source: {args.seconds} s 1280x720, made in {time.monotonic() - started:.1f} s")
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one engine, one core
        with range_server(folder) as served:
            worker = engine(served, folder / "work", Capabilities({"h264": ONE_THREAD},
                                                                  ("h264",)))
            url = f"{served.base}/source.mp4"
            plan_time = timed(worker.run_job, assignment(
                "b.g1.plan", url, {"kind": "plan", "chunk_seconds": args.chunk_seconds}))
            probe = completed(served, "b.g1.plan")["probe"]
            rate = Fraction(probe["frame_rate"])
            per = max(1, round(args.chunk_seconds * rate))
            tasks = chunk_tasks(probe, [*range(0, probe["frames"], per), probe["frames"]])
            chunk_times = [timed(worker.run_job, assignment(f"b.g1.c{t['index']:04d}", url, t))
                           for t in tasks]
            audio_time = timed(worker.run_job, assignment(
                "b.g1.audio", url, {"kind": "audio", "duration": probe["audio"]["duration"]}))
            stitch = {"kind": "stitch", "audio": {"url": completed(served, "b.g1.audio")[
                          "output_url"]},
                      "chunks": [{"index": t["index"], "frames": t["frames"],
                                  "url": completed(served, f"b.g1.c{t['index']:04d}")[
                                      "output_url"]} for t in tasks],
                      "expect": {"frames": probe["frames"],
                                 "duration": float(probe["frames"] / rate),
                                 "audio_duration": probe["audio"]["duration"],
                                 "frame_rate": probe["frame_rate"]}}
            stitch_time = timed(worker.run_job, assignment("b.g1.stitch", url, stitch))
            output = folder / "out" / completed(served, "b.g1.stitch")["output_url"].rsplit(
                "/", 1)[1]
            packet_time = timed(media.tracks, "ffprobe", output)
            decode_time = timed(media.decode_errors, "ffmpeg", output)
            _, joins = media.verify("ffprobe", output, stitch["expect"],
                                    [int(t["frames"]) for t in tasks])
            join_time = timed(lambda: [
                subprocess.run(command, check=True, capture_output=True)
                for command in media.join_commands("ffprobe", output, joins, rate, 1)])
    encode = sum(chunk_times)
    # The audio task runs beside the chunks, on whichever engine is free.
    print(f"plan {plan_time:.2f} s; {len(tasks)} chunks {encode:.1f} s in all "
          f"({min(chunk_times):.1f}..{max(chunk_times):.1f} s each); audio {audio_time:.2f} s")
    print(f"stitch task {stitch_time:.2f} s (fetch, join, verify, publish), of which "
          f"packet check {packet_time:.2f} s and decode at the {len(joins)} joins "
          f"{join_time:.2f} s (a whole decode, no longer in it: {decode_time:.2f} s)")
    for engines in sorted({args.engines, 10}):
        job = plan_time + (encode + audio_time) / engines + stitch_time
        print(f"job on {engines} engines (plan + (chunks + audio)/{engines} + stitch): "
              f"{job:.1f} s; stitch share {100 * stitch_time / job:.1f} %")


if __name__ == "__main__":
    main()
