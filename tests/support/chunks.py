"""Helpers of the chunked-encoding engine tests (issue 23): sources with a sine audio
track, the task bodies an assign answer carries, an engine run in-process against the
recording stand-in server, and the measures the checks use (packets, PSNR)."""

from __future__ import annotations

import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

from dispatch.engine.capabilities import Capabilities
from dispatch.engine.config import TASK_KINDS, EngineConfig
from dispatch.engine.loop import Engine
from tests.support.ranges import Served


def make_source(path: Path, seconds: float, rate: str = "25", size: str = "320x240",
                extra: tuple[str, ...] = ()) -> Path:
    """A testsrc2 clip with a 440 Hz sine track, h264 + AAC, index at the end (so a
    reader over HTTP must seek, as with most real files)."""
    subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=duration={seconds}:size={size}:rate={rate}",
                    "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-g", "50",
                    "-c:a", "aac", *extra, str(path)], check=True, timeout=300)
    return path


def psnr(encoded: Path, source: Path) -> float:
    """Average PSNR of ``encoded`` against ``source``, frame by frame in order (by
    index, whatever their timestamps)."""
    graph = "[0:v]setpts=N/TB[a];[1:v]setpts=N/TB[b];[a][b]psnr=shortest=1"
    result = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-i", str(encoded),
                             "-i", str(source), "-lavfi", graph,
                             "-f", "null", "-"], capture_output=True, text=True, timeout=600)
    found = re.findall(r"average:([0-9.]+|inf)", result.stderr)
    assert found, result.stderr[-2000:]
    return float(found[-1])


def engine(served: Served, work: Path, capabilities: Capabilities,
           task_kinds: tuple[str, ...] = TASK_KINDS, engine_id: str = "e1") -> Engine:
    """An engine whose server is the stand-in and whose outputs are published where
    the stand-in serves them (as the store would serve them to the stitch)."""
    out = served.folder / "out"
    out.mkdir(exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    config = EngineConfig(api_key="key", engine_id=engine_id, ffmpeg=_which("ffmpeg"),
                          ffprobe=_which("ffprobe"), server=served.base, work_dir=str(work),
                          output_dir=str(out), output_url_base=served.base + "/out",
                          heartbeat_interval=0.2, task_kinds=task_kinds)
    return Engine(config, capabilities, None)


def _which(program: str) -> str:
    found = shutil.which(program)
    assert found
    return found


def assignment(job_id: str, source_url: str, task: dict[str, Any] | None,
               codec: str = "h264") -> dict[str, Any]:
    """An assign answer's body, as the protocol gives it to the engine."""
    body: dict[str, Any] = {"job_id": job_id, "attempt": 1, "source_url": source_url,
                            "target_codec": codec}
    if task is not None:
        body["task"] = task
    return body


def chunk_tasks(probe: dict[str, Any], cuts: list[int]) -> list[dict[str, Any]]:
    """Chunk task bodies for frames [cuts[i], cuts[i+1]), as the server stores them."""
    rate = Fraction(probe["frame_rate"])
    tasks = []
    for index, (first, last) in enumerate(zip(cuts, cuts[1:], strict=False)):
        start = probe["start_time"] + float(first / rate)
        tasks.append({"kind": "chunk", "index": index, "start_frame": first,
                      "frames": last - first, "start_time": start,
                      "end_time": start + float((last - first) / rate),
                      "frame_rate": probe["frame_rate"]})
    return tasks


def completed(served: Served, job_id: str) -> dict[str, Any]:
    """The body of the task's ``complete`` report (the test fails on anything else)."""
    finals = [(kind, body) for kind, body in served.reports(job_id)
              if kind in ("complete", "fail")]
    assert len(finals) == 1 and finals[0][0] == "complete", finals
    return finals[0][1]
