"""Where output goes: results on stdout, progress and messages on stderr; colours and
live bars only on a terminal, plain lines otherwise; with ``--json`` stdout is one JSON
document and progress goes nowhere."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def console(stderr: bool = False) -> Console:
    """A rich console that writes escape codes only to a terminal."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = is_terminal(stream)
    # Not a terminal: lines as long as they need (a log or a pipe has no width, and a
    # cut job id is no use to a script).
    return Console(file=stream, force_terminal=tty, no_color=not tty, highlight=False,
                   soft_wrap=not tty, emoji=False, width=None if tty else 4096)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    """One plain line on stderr (a state change, a note)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else \
        f"{rest // 60}:{rest % 60:02d}"


def figures(job: dict[str, Any]) -> str:
    """'42% · chunks 3/12 · 61 fps · 2.4× · ETA 0:12 · engine-1', what is known of it
    (a job in chunks: its combined figures)."""
    parts = []
    if job.get("progress") is not None:
        parts.append(f"{job['progress']:.0f}%")
    chunks = job.get("chunks")
    if chunks:
        parts.append(f"chunks {chunks['completed']}/{chunks['total']}")
    detail = job.get("progress_detail") or {}
    if job.get("status") == "processing":
        if detail.get("fps") is not None:
            parts.append(f"{detail['fps']:g} fps")
        if detail.get("speed") is not None:
            parts.append(f"{detail['speed']:g}×")
        if detail.get("eta_seconds") is not None:
            parts.append(f"ETA {duration(detail['eta_seconds'])}")
    if job.get("assigned_engine"):
        parts.append(str(job["assigned_engine"]))
    return " · ".join(parts)


def chunks(job: dict[str, Any]) -> str | None:
    """'3 of 12 completed, 2 running, 7 pending, 0 failed' (None: not in chunks)."""
    counts = job.get("chunks")
    if not counts:
        return None
    return (f"{counts['completed']} of {counts['total']} completed, {counts['running']} "
            f"running, {counts['pending']} pending, {counts['failed']} failed")
