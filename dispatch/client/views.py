"""Tables for people: jobs, events, engines, and ``top``'s live view of the farm."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from dispatch.client import render
from dispatch.client.api import Api


def _table(*columns: str) -> Any:
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    return table


def jobs_detail(jobs: list[dict[str, Any]]) -> None:
    out = render.console()
    for job in jobs:
        out.print(f"job {job['job_id']}: {job['status']}")
        rows = [("source", job["source_url"]), ("codec", job["target_codec"]),
                ("progress", render.figures(job) or "—"),
                ("priority", str(job["priority"])),
                ("retries", f"{job['retries']} of {job['max_retries']}"),
                ("created", job["created_at"]), ("updated", job["updated_at"])]
        chunks = render.chunks(job)
        if chunks:
            rows.insert(3, ("chunks", chunks))
        if job.get("waiting_reason"):
            rows.append(("waiting", job["waiting_reason"]["message"]))
        if job.get("error_message"):
            rows.append(("error", job["error_message"]))
        if job.get("output_url"):
            rows.append(("output", job["output_url"]))
        for name, value in rows:
            out.print(f"  {name:9} {value}", markup=False)


def jobs_table(page: dict[str, Any]) -> None:
    table = _table("JOB", "STATUS", "CODEC", "PROGRESS", "SOURCE")
    for job in page["jobs"]:
        table.add_row(job["job_id"], job["status"], job["target_codec"],
                      render.figures(job) or "—", job["source_url"])
    out = render.console()
    out.print(table)
    out.print(f"{len(page['jobs'])} of {page['total']} (offset {page['offset']})")


def events_table(history: dict[str, Any]) -> None:
    table = _table("TIME", "EVENT", "ENGINE", "ATTEMPT", "DETAIL")
    for event in history["events"]:
        table.add_row(event["time"], event["event"], event["engine_id"] or "",
                      str(event["attempt"]), event["detail"] or "")
    out = render.console()
    out.print(f"job {history['job_id']}: {len(history['events'])} events", markup=False)
    out.print(table)


def engines_table(engines: list[dict[str, Any]], jobs: dict[str, dict[str, Any]]) -> Any:
    """The engines, with the figures of the jobs they hold when ``jobs`` has them."""
    table = _table("ENGINE", "STATUS", "HOST", "CODECS", "JOB", "PROGRESS", "DONE", "FAILED")
    for engine in engines:
        held = [jobs.get(job_id, {"job_id": job_id}) for job_id in engine["current_jobs"]]
        table.add_row(engine["engine_id"], engine["status"], engine.get("hostname") or "",
                      ",".join(engine.get("supported_codecs") or []) or "any",
                      " ".join(job["job_id"] for job in held) or "—",
                      " ".join(render.figures({**job, "assigned_engine": None})
                               for job in held if "status" in job) or "—",
                      str(engine["jobs_completed"]), str(engine["jobs_failed"]))
    return table


def snapshot(api: Api) -> dict[str, Any]:
    engines = api.get("/engines/")["engines"]
    running = api.get("/jobs/", status="processing", limit=1000)["jobs"]
    running += api.get("/jobs/", status="assigned", limit=1000)["jobs"]
    pending = api.get("/jobs/", status="pending", limit=1000)
    stats = api.get("/stats")
    return {"engines": engines, "running": running,
            "queue": dict(Counter(job["target_codec"] for job in pending["jobs"])),
            "queued": pending["total"], "stats": stats}


def top(api: Api, interval: float, as_json: bool) -> None:
    if as_json:
        render.emit_json(snapshot(api))
        return
    from rich.console import Group
    from rich.live import Live

    out = render.console()
    first: tuple[float, int] | None = None

    def view() -> Any:
        nonlocal first
        now = snapshot(api)
        completed = now["stats"]["jobs"].get("completed", 0)
        first = first or (time.monotonic(), completed)
        minutes = (time.monotonic() - first[0]) / 60
        rate = (completed - first[1]) / minutes if minutes > 0.05 else None
        queue = ", ".join(f"{codec} {count}" for codec, count in sorted(now["queue"].items()))
        per_hour = now["stats"]["performance"].get("jobs_per_hour", 0)
        lines = [f"{render_time()}  engines {len(now['engines'])}, running "
                 f"{len(now['running'])}, queued {now['queued']}"
                 + (f" ({queue})" if queue else ""),
                 f"completed per minute: {rate:.1f} since start" if rate is not None
                 else f"completed per minute: {per_hour / 60:.2f} over the last hour"]
        jobs = {job["job_id"]: job for job in now["running"]}
        return Group(*lines, engines_table(now["engines"], jobs))

    try:
        if not out.is_terminal:
            while True:  # a snapshot per refresh, plain, for a log or a pipe
                out.print(view())
                out.print()
                time.sleep(interval)
        with Live(view(), console=out, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(view(), refresh=True)
    except KeyboardInterrupt:
        return


def render_time() -> str:
    return time.strftime("%H:%M:%S")
