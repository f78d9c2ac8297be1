"""Issue #21: files in and out without shared disks, end to end. A client uploads a
file in parts, a real ``dispatch-engine`` (no store credentials) transcodes it and
uploads its output through the server, and the client downloads the result; against
the embedded store and against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from dispatch.engine.upload import sha256_of
from tests.support.engine import Engine, ffprobe, file_server, make_clip
from tests.support.files import download, noise_clip, upload
from tests.support.helpers import poll
from tests.support.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedS3
from tests.support.server import BIN as SERVER_BIN
from tests.support.server import Server

pytestmark = pytest.mark.e2e

KEY = "files-e2e-key-0123456789abcdef"
START = 30.0
JOB_DONE = 90.0


@pytest.fixture(scope="module", params=["local", "s3"])
def farm(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server on the embedded store or on SeaweedFS (5 MiB parts), an engine that
    uploads its outputs there, and the clip they work on."""
    root = tmp_path_factory.mktemp(f"files-{request.param}")
    saved = {name: os.environ.pop(name) for name in list(os.environ)
             if name.startswith(("DISTCONV_", "AWS_"))}
    weed = SeaweedS3(root).start() if request.param == "s3" else None
    server = Server(root, KEY, "--state-file", str(root / "state.json"),
                    "--upload-part-mb", "5", *(weed.args() if weed else []),
                    env=weed.env() if weed else None).start()
    engine = Engine(root, server.url, KEY, "files-engine", "--codecs", "h264",
                    keep_outputs=False).start()
    assert not any(name.startswith("AWS_") for name in engine.env)
    clip = noise_clip(root / "noise.avi", 5)
    try:
        poll(lambda: server.request("GET", "/engines/files-engine").status_code == 200,
             START, "engine registered")
        yield {"server": server, "engine": engine, "root": root, "clip": clip,
               "weed": weed, "kind": request.param}
    finally:
        engine.stop()
        server.stop()
        if weed is not None:
            weed.stop()
        os.environ.update(saved)


def submit(server: Server, source_url: str) -> str:
    response = server.request("POST", "/jobs/", json={
        "source_url": source_url, "target_codec": "h264", "job_size": 1})
    assert response.status_code == 201, response.text
    return response.json()["job_id"]


def wait_finished(server: Server, job_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body = server.request("GET", f"/jobs/{job_id}").json()
        return body if body["status"] in ("completed", "failed") else None

    return poll(finished, JOB_DONE, f"job {job_id} finished")


def test_a_file_goes_in_in_parts_and_the_result_comes_back(farm: dict[str, Any],
                                                           tmp_path: Path) -> None:
    server, clip = farm["server"], farm["clip"]
    size = clip.stat().st_size
    assert 10 << 20 < size <= 15 << 20
    stored = upload(server.url, server.headers, clip)
    assert len(stored["upload"]["parts"]) == 3
    assert stored["size"] == size and stored["sha256"] == sha256_of(clip)
    assert stored["source_url"].startswith("store://sources/")
    if farm["kind"] == "s3":  # the parts went to SeaweedFS, not through the server
        assert all(part["url"].startswith(farm["weed"].endpoint)
                   for part in stored["upload"]["parts"])

    job_id = submit(server, stored["source_url"])
    job = wait_finished(server, job_id)
    assert job["status"] == "completed", job["error_message"]
    assert job["source_url"] == stored["source_url"]
    assert job["output"]["content_type"] == "video/mp4"

    result = download(server.url, server.headers, job_id, tmp_path / "result.mp4")
    assert result.stat().st_size == job["output"]["size"]
    assert sha256_of(result) == job["output"]["sha256"]
    probed = ffprobe(result)
    assert probed["codec"] == "h264"
    assert abs(probed["duration"] - ffprobe(clip)["duration"]) < 0.2
    # Nothing was kept on the engine: its output went to the store.
    assert not (farm["root"] / "distconv-output").exists() or \
        not list((farm["root"] / "distconv-output").iterdir())


def test_an_http_source_and_ranges(farm: dict[str, Any], tmp_path: Path) -> None:
    server = farm["server"]
    folder = tmp_path / "web"
    folder.mkdir()
    clip = make_clip(folder / "small.mp4", 2)
    with file_server(folder) as base:
        job_id = submit(server, f"{base}/small.mp4")
        job = wait_finished(server, job_id)
    assert job["status"] == "completed", job["error_message"]
    assert job["source_url"] == f"{base}/small.mp4"
    link = server.request("GET", f"/jobs/{job_id}/output", allow_redirects=False)
    assert link.status_code == 302
    ranged = requests.get(link.headers["Location"], headers={"Range": "bytes=10-109"},
                          timeout=30)
    assert ranged.status_code == 206 and len(ranged.content) == 100
    whole = download(server.url, server.headers, job_id, tmp_path / "out.mp4")
    assert whole.read_bytes()[10:110] == ranged.content
    assert ffprobe(whole)["codec"] == "h264"
    assert abs(ffprobe(whole)["duration"] - ffprobe(clip)["duration"]) < 0.2


def test_an_engine_that_reports_its_own_output_url(farm: dict[str, Any]) -> None:
    """A C++-style engine: it takes the signed source URL, keeps its output elsewhere
    and reports that URL; the job completes with no stored output."""
    server = farm["server"]
    stored = upload(server.url, server.headers, farm["clip"], name="for-cpp.avi")
    beat = server.request("POST", "/engines/heartbeat", json={
        "engine_id": "cpp-engine", "engine_type": "cpp", "supported_codecs": ["vp9"]})
    assert beat.status_code == 200
    response = server.request("POST", "/jobs/", json={
        "source_url": stored["source_url"], "target_codec": "vp9", "job_size": 1})
    job_id = response.json()["job_id"]
    assigned = server.request("POST", "/assign_job/", json={"engine_id": "cpp-engine"}).json()
    assert assigned["job_id"] == job_id
    source = requests.get(assigned["source_url"], timeout=60)
    assert source.status_code == 200 and len(source.content) == stored["size"]
    done = server.request("POST", f"/jobs/{job_id}/complete", json={
        "engine_id": "cpp-engine", "output_url": "http://cpp-host/outputs/out.webm"})
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["status"], body["output_url"], body["output"]) == (
        "completed", "http://cpp-host/outputs/out.webm", None)
    link = server.request("GET", f"/jobs/{job_id}/output", allow_redirects=False)
    assert link.status_code == 409
    server.request("DELETE", "/engines/cpp-engine")


@pytest.mark.parametrize("farm", ["s3"], indirect=True)
def test_the_engine_retries_its_upload_after_a_store_outage(farm: dict[str, Any],
                                                            tmp_path: Path) -> None:
    server, weed, engine = farm["server"], farm["weed"], farm["engine"]
    folder = tmp_path / "web"
    folder.mkdir()
    make_clip(folder / "small.mp4", 2)
    weed.stop()  # the store is down from before the job starts
    try:
        with file_server(folder) as base:
            job_id = submit(server, f"{base}/small.mp4")
            poll(lambda: f"/jobs/{job_id}/output_upload); retrying" in engine.output(),
                 JOB_DONE, "the engine retrying its output upload")
            assert server.request("GET", f"/jobs/{job_id}").json()["status"] == "processing"
            weed.start()
            job = wait_finished(server, job_id)
    finally:
        if weed.proc is None or weed.proc.poll() is not None:
            weed.start()
    assert job["status"] == "completed", job["error_message"]
    result = download(server.url, server.headers, job_id, tmp_path / "after.mp4")
    assert ffprobe(result)["codec"] == "h264"


def test_no_signature_or_credential_reaches_a_log(farm: dict[str, Any],
                                                  tmp_path: Path) -> None:
    """After an upload, a job and a download (and whatever ran before on this farm):
    neither the server's log, nor the engine's, nor /metrics holds a signature or a
    store credential."""
    server = farm["server"]
    clip = make_clip(tmp_path / "tiny.mp4", 1)
    job_id = submit(server, upload(server.url, server.headers, clip)["source_url"])
    assert wait_finished(server, job_id)["status"] == "completed"
    download(server.url, server.headers, job_id, tmp_path / "tiny-out.mp4")
    logs = server.output() + farm["engine"].output()
    assert "files-engine" in logs and "upload" in logs
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    # The embedded store's requests are counted by route (S3's never reach the server).
    assert ("/files/" in metrics) == (farm["kind"] == "local")
    for secret in ("signature=", "Signature=", "expires=", "X-Amz-", SECRET_KEY, ACCESS_KEY):
        assert secret not in logs
        assert secret not in metrics


@pytest.mark.parametrize("farm", ["s3"], indirect=True)
def test_a_missing_bucket_or_refused_credentials_stop_the_server(farm: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    """The start-up check writes, reads and deletes a probe: a bucket that does not
    exist or credentials the store refuses exit 1 naming which, without the secret."""
    weed = farm["weed"]
    cases = (
        (["--storage", "s3://no-such-bucket", "--storage-endpoint", weed.endpoint],
         weed.env(), "bucket 'no-such-bucket' does not exist"),
        (weed.args(), {**weed.env(), "AWS_SECRET_ACCESS_KEY": "wrong-secret-0123456789"},
         "credentials refused"),
    )
    for args, env, message in cases:
        state = tmp_path / f"state-{len(message)}.json"
        result = subprocess.run(
            [str(SERVER_BIN), "--state-file", str(state), "--port", "0", *args],
            env={**os.environ, "DISTCONV_API_KEY": KEY, **env}, capture_output=True,
            text=True, timeout=120)
        assert result.returncode == 1, result.stderr
        assert message in result.stderr
        assert "wrong-secret" not in result.stderr + result.stdout
