"""Issue #22: `distconv submit --chunk-seconds N` (the server side is issue 23): the
option's range checked before anything is sent, the field in each job body, and a job
in chunks shown as people see it (the live bar's line, the plain lines of a log,
`distconv status`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from dispatch.client import main, render, views, watch
from dispatch.client.api import Api

CHUNKS = {"total": 12, "pending": 7, "running": 2, "completed": 3, "failed": 0}


def job(**fields: Any) -> dict[str, Any]:
    return {"job_id": "1796571760321558_0", "status": "processing", "progress": 25.0,
            "progress_detail": {"fps": 61.5, "speed": 2.4, "eta_seconds": 72,
                                "updated_at": "2026-12-06T17:00:00Z"},
            "assigned_engine": "engine-1", "chunks": None, "error_message": None,
            "source_url": "store://sources/a/talk.mov", "target_codec": "h264",
            "priority": 0, "retries": 0, "max_retries": 3, "output_url": None,
            "created_at": "2026-12-06T16:59:00Z", "updated_at": "2026-12-06T17:00:00Z",
            **fields}


def test_a_job_in_chunks_shows_them_beside_its_combined_figures() -> None:
    assert "25% · chunks 3/12 · 61.5 fps · 2.4× · ETA 1:12 · engine-1" == \
        render.figures(job(chunks=CHUNKS))
    assert "25% · 61.5 fps · 2.4× · ETA 1:12 · engine-1" == render.figures(job())
    assert "talk.mov: processing · 25% · chunks 3/12 · 61.5 fps · 2.4× · ETA 1:12 · " \
           "engine-1" == watch.line(job(chunks=CHUNKS), "talk.mov")


def test_status_shows_the_chunks_when_the_job_has_them(
        capsys: pytest.CaptureFixture[str]) -> None:
    views.jobs_detail([job(chunks=CHUNKS), job(job_id="2_0")])

    out = capsys.readouterr().out
    assert "  chunks    3 of 12 completed, 2 running, 7 pending, 0 failed\n" in out
    assert 1 == out.count("chunks   ")  # the job without chunks has no such line


class Jobs:
    """An API that answers each look at the job with the next state."""

    def __init__(self, states: list[dict[str, Any]]) -> None:
        self.states = states
        self.settings = SimpleNamespace(poll_interval=0.0)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.states.pop(0)


def test_a_log_gets_a_line_when_a_chunk_finishes(capsys: pytest.CaptureFixture[str]) -> None:
    def at(done: int, **fields: Any) -> dict[str, Any]:
        return job(chunks={**CHUNKS, "completed": done, "pending": 9 - done}, **fields)

    api = Jobs([at(3), at(3, progress=30.0), at(4, progress=40.0),
                at(12, status="completed", progress=100.0)])

    watch.wait(api, [at(3)], {}, quiet=False)  # type: ignore[arg-type]

    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" · ")[2] for line in lines] == [
        "chunks 3/12", "chunks 4/12", "chunks 12/12"], lines


@pytest.mark.parametrize("value", ["1", "601", "ten"])
def test_chunk_seconds_outside_2_to_600_is_a_usage_error(
        value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main.main(["--api-key", "k", "submit", "http://example.com/a.mp4", "--codec",
                   "h264", "--chunk-seconds", value])

    assert 2 == exited.value.code
    assert "--chunk-seconds" in capsys.readouterr().err


def test_chunk_seconds_goes_in_each_job_body(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, str, Any]] = []

    def send(self: Api, method: str, path: str, json: Any = None, **_: Any) -> Any:
        sent.append((method, path, json))
        return SimpleNamespace(status_code=201, json=lambda: job(status="pending"))

    monkeypatch.setattr(Api, "send", send)
    monkeypatch.setattr("dispatch.client.submit.url_size", lambda url: None)

    with pytest.raises(SystemExit) as exited:
        main.main(["--api-key", "k", "submit", "http://example.com/a.mp4",
                   "http://example.com/b.mp4", "--codec", "h264", "--chunk-seconds", "10",
                   "--json"])

    assert 0 == exited.value.code
    assert [("POST", "/jobs/", 10)] * 2 == [
        (method, path, body["chunk_seconds"]) for method, path, body in sent]
