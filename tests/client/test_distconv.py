"""Issue #22: ``distconv``, run as a person runs it (a subprocess, without a terminal
and inside a pseudo-terminal), against a real ``dispatch-server`` and a real
``dispatch-engine`` transcoding lavfi clips served over loopback HTTP. Each test
asserts what the person sees: exit statuses, messages, files, ffprobe of the result,
and the jobs the server holds."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY
from tests.support.client import DISTCONV, ESCAPE, Run, client_env, run_distconv
from tests.support.engine import Engine, ffprobe, file_server, make_clip
from tests.support.helpers import poll
from tests.support.server import Server, free_port

pytestmark = pytest.mark.e2e

START = 30.0  # seconds an engine may take to start (test encodes, benchmark)
# ~2-3 s of h264 encoding here: long enough for progress reports with fps and ETA
# (the engine reports at most once a second), short enough for the suite.
PROGRESS_SECONDS = 20


@dataclass
class Farm:
    server: Server
    engine: Engine
    clips: str  # URL of the clips folder


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """A server, one engine whose outputs are served over HTTP (``output_url`` is
    http), and the clips: small (2 s), progress (20 s at 640x360), corrupt."""
    root = tmp_path_factory.mktemp("farm")
    clips = root / "clips"
    clips.mkdir()
    for name in ("small", "a", "b", "c"):
        make_clip(clips / f"{name}.mp4", 2)
    make_clip(clips / "progress.mp4", PROGRESS_SECONDS, size="640x360", source="testsrc2")
    (clips / "corrupt.mp4").write_bytes(bytes((i * 7919) % 251 for i in range(200_000)))
    outputs = root / "engine-1-output"
    outputs.mkdir()
    saved = {name: os.environ.pop(name) for name in list(os.environ)
             if name.startswith("DISTCONV_")}
    server = Server(root, API_KEY, env={"DISTCONV_RETRY_BACKOFF": "0"})
    try:
        with file_server(clips) as clips_url, file_server(outputs) as outputs_url:
            server.start()
            engine = Engine(root, server.url, API_KEY, "engine-1", "--output-url-base",
                            outputs_url).start()
            try:
                poll(lambda: re.search(r"benchmark [0-9.]+ s recorded", engine.output()),
                     START, "engine ready")
                yield Farm(server, engine, clips_url)
            finally:
                engine.stop()
    finally:
        server.stop()
        os.environ.update(saved)


def env(farm: Farm | None, **extra: str) -> dict[str, str]:
    return client_env(farm.server.url if farm is not None else None, **extra)


def distconv(farm: Farm | None, *args: str, timeout: float = 90, **extra: str) -> Run:
    """``distconv ARGS`` without a terminal (stdout and stderr are pipes)."""
    return run_distconv(farm.server.url if farm is not None else None, *args,
                        timeout=timeout, **extra)


def distconv_in_terminal(farm: Farm | None, *args: str, timeout: float = 90,
                         **extra: str) -> tuple[int, bytes]:
    """``distconv ARGS`` inside a pseudo-terminal; its exit status and every byte it
    wrote to the terminal."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(DISTCONV), *args],
                            env=env(farm, TERM="xterm-256color", COLUMNS="160", **extra),
                            stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    seen = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the terminal closed: the process has exited
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(10), bytes(seen)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_in(mode: str, farm: Farm | None, *args: str, **extra: str) -> Run:
    """``distconv ARGS`` with pipes, or in a terminal (then ``err`` holds everything the
    terminal showed, its line ends as written)."""
    if mode == "pipe":
        return distconv(farm, *args, **extra)
    status, seen = distconv_in_terminal(farm, *args, **extra)
    return Run(status, "", seen.decode("utf-8", "replace").replace("\r\n", "\n"))


# Messages and exit statuses are the same whether a person or a script runs it.
MODES = pytest.mark.parametrize("mode", ["pipe", "terminal"])


def jobs_of(farm: Farm) -> list[dict[str, Any]]:
    return farm.server.request("GET", "/jobs/?limit=1000").json()["jobs"]


def test_submit_wait_output_in_a_terminal_shows_progress_and_saves_the_result(
        farm: Farm, tmp_path: Path) -> None:
    """submit --wait --output in a terminal: exit 0, an h264 file of the clip's
    duration, and the live view showed percent, fps and ETA on the way."""
    target = tmp_path / "out.mp4"

    status, seen = distconv_in_terminal(
        farm, "submit", f"{farm.clips}/progress.mp4", "--codec", "h264", "--wait",
        "--output", str(target))

    text = seen.decode("utf-8", "replace")
    assert 0 == status, text
    probe = ffprobe(target)
    assert "h264" == probe["codec"]
    assert abs(probe["duration"] - PROGRESS_SECONDS) < 0.5
    assert re.search(r"\d+% · [0-9.]+ fps · [0-9.]+× · ETA \d+:\d\d", text), text
    assert ESCAPE.search(seen)  # a live view, not the plain lines
    assert f"saved to {target}" in text


def test_submit_without_a_terminal_prints_plain_lines_and_the_result(
        farm: Farm, tmp_path: Path) -> None:
    """Without a terminal: no escape sequence anywhere, one plain line per state
    change, and the same result."""
    target = tmp_path / "plain.mp4"

    run = distconv(farm, "submit", f"{farm.clips}/small.mp4", "--codec", "h264", "--wait",
                   "--output", str(target))

    assert 0 == run.status, run.text
    assert not ESCAPE.search(run.text.encode())
    lines = run.err.splitlines()
    assert any(re.fullmatch(r"small\.mp4: job \d+_\d+, pending", line) for line in lines)
    assert any(re.fullmatch(r"small\.mp4: completed · 100% · engine-1", line)
               for line in lines), run.err
    assert f"small.mp4: saved to {target}" in lines
    assert "h264" == ffprobe(target)["codec"]


def test_the_same_command_twice_makes_one_job(farm: Farm) -> None:
    """A second run of the same submit (after a dropped connection, say) gets the job
    the first one made."""
    args = ("submit", f"{farm.clips}/small.mp4?twice", "--codec", "vp9", "--priority",
            "3", "--json")

    first, second = distconv(farm, *args), distconv(farm, *args)

    assert (0, 0) == (first.status, second.status), first.text + second.text
    job_id = json.loads(first.out)["jobs"][0]["job_id"]
    assert job_id == json.loads(second.out)["jobs"][0]["job_id"]
    assert [job_id] == [job["job_id"] for job in jobs_of(farm)
                        if job["source_url"].endswith("?twice")]
    other = distconv(farm, *args[:-2], "4", "--json")
    assert json.loads(other.out)["jobs"][0]["job_id"] != job_id  # other options: a new job


def test_three_sources_make_three_jobs_that_all_complete(farm: Farm, tmp_path: Path) -> None:
    """Three URLs in one command: three jobs, all completed, three results named after
    their sources in the output folder; --json is one document holding the ids."""
    run = distconv(farm, "submit", *(f"{farm.clips}/{name}.mp4" for name in "abc"),
                   "--codec", "h264", "--wait", "--output", f"{tmp_path}/", "--json")

    assert 0 == run.status, run.text
    document = json.loads(run.out)
    jobs = document["jobs"]
    assert 3 == len({job["job_id"] for job in jobs})
    assert ["completed"] * 3 == [job["status"] for job in jobs]
    assert [str(tmp_path / f"{name}.mp4") for name in "abc"] == [
        job["downloaded_to"] for job in jobs]
    assert ["a.mp4", "b.mp4", "c.mp4"] == sorted(p.name for p in tmp_path.iterdir())
    assert "" == run.err  # --json: progress goes nowhere


def test_json_of_every_read_command_parses(farm: Farm) -> None:
    """status, jobs, events, engines and top print exactly one JSON document."""
    job_id = json.loads(distconv(farm, "submit", f"{farm.clips}/small.mp4?json",
                                 "--codec", "h264", "--json").out)["jobs"][0]["job_id"]
    for args, key in ((("status", job_id), "job_id"), (("jobs", "--limit", "5"), "jobs"),
                      (("events", job_id), "events"), (("engines",), "engines"),
                      (("top",), "engines"), (("wait", job_id), "status")):
        run = distconv(farm, *args, "--json")
        assert 0 == run.status, (args, run.text)
        assert key in json.loads(run.out), (args, run.out)


@MODES
def test_a_failed_job_exits_1_with_the_servers_message(farm: Farm, mode: str) -> None:
    run = run_in(mode, farm, "submit", f"{farm.clips}/corrupt.mp4", "--codec", "h264",
                   "--max-retries", "0", "--wait")

    assert 1 == run.status, run.text
    job_id = re.search(r"job (\d+_\d+)", run.err).group(1)  # type: ignore[union-attr]
    job = farm.server.request("GET", f"/jobs/{job_id}").json()
    assert "failed" == job["status"]
    assert f"distconv: job {job_id} failed: {job['error_message']}" in run.err
    assert "Traceback" not in run.text


def test_a_cancel_from_another_shell_while_waiting_exits_1_saying_cancelled(
        farm: Farm) -> None:
    """A job no engine can take waits; `distconv cancel` from another process ends the
    first one's wait with exit 1."""
    waiting = subprocess.Popen(
        [str(DISTCONV), "submit", f"{farm.clips}/small.mp4", "--codec", "nosuchcodec",
         "--wait"], env=env(farm), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        job = poll(lambda: next((job for job in jobs_of(farm)
                                 if job["target_codec"] == "nosuchcodec"
                                 and job["status"] == "pending"), None), 20, "job submitted")
        cancel = distconv(farm, "cancel", job["job_id"])
        assert (0, f"job {job['job_id']}: cancelled\n") == (cancel.status, cancel.err)
        out, err = waiting.communicate(timeout=20)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert 1 == waiting.returncode, err
    assert f"distconv: job {job['job_id']} was cancelled" in err.decode()


def test_ctrl_c_while_waiting_exits_130_and_leaves_the_job_on_the_farm(farm: Farm) -> None:
    """Ctrl-C: exit 130, the job still pending on the server, and the message names the
    command that picks it up again."""
    waiting = subprocess.Popen(
        [str(DISTCONV), "submit", f"{farm.clips}/small.mp4", "--codec", "nosuchcodec2",
         "--wait"], env=env(farm), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert waiting.stderr is not None
        # "small.mp4: job ID, pending" once submitted, then its state as the wait begins.
        first = waiting.stderr.readline() + waiting.stderr.readline()
        job = next(job for job in jobs_of(farm) if job["target_codec"] == "nosuchcodec2")
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=20)
        err = first + err
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert 130 == waiting.returncode, err
    assert f"`distconv wait {job['job_id']}` picks it up again" in err.decode()
    assert "Traceback" not in err.decode()
    assert "pending" == farm.server.request("GET", f"/jobs/{job['job_id']}").json()["status"]
    farm.server.request("DELETE", f"/jobs/{job['job_id']}")


@MODES
def test_a_wrong_key_exits_1_with_the_servers_message(farm: Farm, mode: str) -> None:
    run = run_in(mode, farm, "jobs", DISTCONV_API_KEY="not-the-key")

    assert 1 == run.status
    message = farm.server.request("GET", "/jobs/", headers={"X-API-Key": "nope"}).json()
    assert f"distconv: the server refused: {message['error']['message']} " \
           f"(401 unauthorized)\n" == run.err


@MODES
def test_no_key_exits_2_naming_the_variable(farm: Farm, mode: str) -> None:
    run = run_in(mode, None, "jobs", DISTCONV_SERVER=farm.server.url)

    assert 2 == run.status
    assert "DISTCONV_API_KEY" in run.err
    assert "Traceback" not in run.text


@MODES
def test_a_stopped_server_exits_3_after_the_retries(tmp_path: Path, mode: str) -> None:
    server = Server(tmp_path, API_KEY).start()
    server.stop()
    started = time.monotonic()

    run = run_in(mode, None, "status", "1_0", DISTCONV_SERVER=server.url,
                   DISTCONV_API_KEY=API_KEY, DISTCONV_CLIENT_RETRIES="2")

    assert 3 == run.status, run.text
    assert time.monotonic() - started >= 1.5  # it waited 0.5 s, then 1 s, trying again
    assert f"distconv: cannot reach the server at {server.url}" in run.err
    assert "after 3 attempts" in run.err


def test_download_of_an_output_kept_on_the_engine_says_so(farm: Farm, tmp_path: Path) -> None:
    """A job whose output is a file:// on the engine's machine (not in the server's
    store): exit 1 saying where it is and that this machine cannot fetch it."""
    created = farm.server.request("POST", "/jobs/", json={
        "source_url": "http://example.com/x.mp4", "target_codec": "x", "job_size": 0})
    job_id = created.json()["job_id"]
    farm.server.request("POST", "/engines/heartbeat", json={"engine_id": "manual",
                                                            "supported_codecs": ["x"]})
    farm.server.request("POST", "/assign_job/", json={"engine_id": "manual",
                                                      "capabilities": ["x"]})
    farm.server.request("POST", f"/jobs/{job_id}/complete",
                        json={"output_url": "file:///srv/out/x.mkv"})

    run = distconv(farm, "download", job_id, "-o", str(tmp_path))

    assert 1 == run.status, run.text
    assert "not in the server's store" in run.err
    assert "file:///srv/out/x.mkv" in run.err
    assert [] == list(tmp_path.iterdir())


def test_version() -> None:
    run = distconv(None, "--version")
    assert (0, "distconv 1.0.0\n") == (run.status, run.out)


def test_settings_come_from_flag_then_variable_then_config_file(farm: Farm,
                                                                tmp_path: Path) -> None:
    """The config file gives the server and a key file; a variable beats the file, a
    flag beats the variable; an unknown setting in the file exits 2 naming it."""
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    config = tmp_path / "client.toml"
    config.write_text(f'server = "{farm.server.url}"\napi_key_file = "{key_file}"\n')
    dead = f"http://127.0.0.1:{free_port()}"

    from_file = distconv(None, "--config", str(config), "engines", "--json")
    variable = distconv(None, "--config", str(config), "engines", DISTCONV_SERVER=dead,
                        DISTCONV_CLIENT_RETRIES="0")
    flag = distconv(None, "--config", str(config), "--server", farm.server.url, "engines",
                    DISTCONV_SERVER=dead)
    config.write_text('sever = "http://x"\n')
    typo = distconv(None, "--config", str(config), "engines")

    assert 0 == from_file.status and "engines" in json.loads(from_file.out), from_file.text
    assert 3 == variable.status and dead in variable.err
    assert 0 == flag.status and "engine-1" in flag.out
    assert (2, f"distconv: config file {config}: unknown setting sever (known: server, "
               "api_key, api_key_file, retries, poll_interval)\n") == (typo.status, typo.err)


def test_tables_without_a_terminal_are_plain_and_whole(farm: Farm) -> None:
    """jobs, status, events, engines and top print plain text, job ids and URLs whole."""
    job_id = json.loads(distconv(farm, "submit", f"{farm.clips}/small.mp4?tables",
                                 "--codec", "h264", "--json").out)["jobs"][0]["job_id"]
    for args in (("jobs", "--limit", "1000"), ("status", job_id), ("events", job_id),
                 ("engines",)):
        run = distconv(farm, *args)
        assert 0 == run.status, (args, run.text)
        assert not ESCAPE.search(run.text.encode()), args
        assert (job_id if args[0] != "engines" else "engine-1") in run.out, (args, run.out)
        assert args[0] != "events" or re.search(r"\n\S+Z +submitted ", run.out), run.out
    assert f"{farm.clips}/small.mp4?tables" in distconv(farm, "jobs", "--limit", "1000").out
