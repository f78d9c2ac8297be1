"""What the chunked-encoding tests measure on a file, as a user checking the output
would: the video's frame count (packets, no decode), each stream's duration, and
whether the whole file decodes without an error."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.support.helpers import poll
from tests.support.server import Server

JOB_DONE = 180.0


def streams(path: Path) -> dict[str, dict[str, Any]]:
    """The first video and audio stream: codec, packet count and duration (s)."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-count_packets", "-show_entries",
         "stream=codec_type,codec_name,nb_read_packets,duration,r_frame_rate",
         "-of", "json", str(path)], capture_output=True, text=True, timeout=120, check=True)
    found: dict[str, dict[str, Any]] = {}
    for stream in json.loads(result.stdout)["streams"]:
        kind = stream["codec_type"]
        if kind in ("video", "audio") and kind not in found:
            found[kind] = {"codec": stream["codec_name"],
                           "packets": int(stream["nb_read_packets"]),
                           "duration": float(stream.get("duration") or "nan")}
    return found


def decode_errors(path: Path) -> str:
    """What ``ffmpeg -v error -i OUT -f null -`` prints (nothing for a clean file)."""
    result = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path),
                             "-f", "null", "-"], capture_output=True, text=True, timeout=300)
    return result.stdout + result.stderr + ("" if result.returncode == 0
                                            else f"exit {result.returncode}")


def clip_with_audio(path: Path, seconds: float, size: str = "160x120",
                    rate: int = 25) -> Path:
    """A lavfi clip with a sine audio track, MPEG-4 video and AAC in MP4 with its index
    first (as a file from a camera or an editor usually is)."""
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", f"testsrc2=duration={seconds}:size={size}:rate={rate}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
         "-c:v", "mpeg4", "-q:v", "4", "-c:a", "aac", "-movflags", "+faststart",
         str(path)], check=True, timeout=300)
    return path


def submit_chunked(server: Server, source_url: str, chunk_seconds: int,
                   **extra: Any) -> str:
    response = server.request("POST", "/jobs/", json={
        "source_url": source_url, "target_codec": "h264", "job_size": 1,
        "chunk_seconds": chunk_seconds, **extra})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["chunk_seconds"] == chunk_seconds and body["chunks"] is not None
    return str(body["job_id"])


def job(server: Server, job_id: str) -> dict[str, Any]:
    response = server.request("GET", f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def chunks(server: Server, job_id: str) -> dict[str, Any]:
    response = server.request("GET", f"/jobs/{job_id}/chunks")
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_finished(server: Server, job_id: str, timeout: float = JOB_DONE) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body = job(server, job_id)
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    return poll(finished, timeout, f"job {job_id} finished", interval=0.2)


def restart_mid_job(server: Server, job_id: str) -> None:
    """Kill the server (-9) once a chunk is done and another runs; start it again on
    the same state, port and store (or database)."""
    def half_way() -> bool:
        rows = chunks(server, job_id)["chunks"]
        return any(r["status"] == "completed" for r in rows) and \
            any(r["status"] == "processing" for r in rows)

    poll(half_way, 120, "a chunk done and another encoding", interval=0.05)
    server.kill()
    server.start(timeout=60)


def assert_exact(output: Path, source: Path) -> dict[str, dict[str, Any]]:
    """The issue's checks: same video frame count, video duration within one frame,
    audio within 50 ms, and a clean decode. Returns what was measured."""
    got, want = streams(output), streams(source)
    assert got["video"]["codec"] == "h264"
    assert got["video"]["packets"] == want["video"]["packets"], (got, want)
    frame = 1 / 25
    assert abs(got["video"]["duration"] - want["video"]["duration"]) <= frame + 1e-6, (got, want)
    assert "audio" in got, got
    assert abs(got["audio"]["duration"] - want["audio"]["duration"]) <= 0.050, (got, want)
    assert decode_errors(output) == ""
    return got
