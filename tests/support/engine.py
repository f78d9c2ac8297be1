"""Real ``dispatch-engine`` processes, lavfi clips and a loopback file server, for the
end-to-end engine tests and the engine benchmark."""

from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).with_name("dispatch-engine")


def make_clip(path: Path, seconds: float, size: str = "160x120", source: str = "testsrc",
              audio: bool = False) -> Path:
    """A clip from ffmpeg's lavfi test sources, stored as MPEG-4 part 2 (fast to write,
    so the engine's h264/vp9 encode is the slow part)."""
    command = ["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-y", "-f", "lavfi",
               "-i", f"{source}=duration={seconds}:size={size}:rate=25"]
    if audio:
        command += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
                    "-c:a", "aac"]
    command += ["-c:v", "mpeg4", "-q:v", "5", str(path)]
    subprocess.run(command, check=True, timeout=120)
    return path


def ffprobe(target: str | Path) -> dict[str, Any]:
    """Codec of the first video stream and the container's duration."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name:format=duration", "-of", "default=nw=1", str(target)],
        capture_output=True, text=True, timeout=60, check=True)
    fields = dict(line.split("=", 1) for line in result.stdout.split())
    return {"codec": fields["codec_name"], "duration": float(fields["duration"])}


@contextmanager
def file_server(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on a free loopback port; yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def ffmpeg_children(pid: int) -> list[int]:
    """Running ffmpeg processes whose parent is ``pid`` (zombies do not count)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if comm == "ffmpeg" and int(ppid) == pid and state != "Z":
            found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


class Engine:
    """A ``dispatch-engine`` subprocess with its own work and output folders."""

    def __init__(self, root: Path, server_url: str, api_key: str, engine_id: str,
                 *args: str, keep_outputs: bool = True, prefix: Sequence[str] = ()) -> None:
        """``keep_outputs``: pass ``--output-dir`` (outputs stay on the engine);
        without it the engine uploads them to the server's store. ``prefix`` runs the
        engine under another program (``taskset -c 0``)."""
        self.prefix = list(prefix)
        self.engine_id = engine_id
        self.work_dir = root / f"{engine_id}-work"
        self.output_dir = root / f"{engine_id}-output"
        self.log = root / f"{engine_id}.log"
        outputs = ["--output-dir", str(self.output_dir)] if keep_outputs else []
        self.args = ["--server", server_url, "--engine-id", engine_id,
                     "--work-dir", str(self.work_dir), *outputs,
                     "--heartbeat-interval", "1", *args]
        # Engines hold no store credentials: none reach them from the test run either.
        self.env = {key: value for key, value in os.environ.items()
                    if not key.startswith(("DISTCONV_", "AWS_"))}
        self.env["DISTCONV_API_KEY"] = api_key
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_start = 0

    def start(self) -> Engine:
        self.log_start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as handle:
            self.proc = subprocess.Popen([*self.prefix, str(BIN), *self.args], env=self.env,
                                         stdout=handle, stderr=subprocess.STDOUT,
                                         cwd=self.work_dir.parent)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        """What this run (since the last start) logged."""
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as handle:
            handle.seek(self.log_start)
            return handle.read().decode("utf-8", "replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def files(self) -> tuple[list[str], list[str]]:
        """Names in the work folder and in the output folder."""
        def names(folder: Path) -> list[str]:
            return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

        return names(self.work_dir), names(self.output_dir)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
