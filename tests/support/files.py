"""Files in and out as a client does it: an upload in parts through the URLs the
server hands out (no API key on them), and the download of a job's output."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import requests

CHUNK = 1 << 20


def noise_clip(path: Path, seconds: float) -> Path:
    """A clip of noise (it does not compress: ~2.5 MB a second), MPEG-4 in AVI."""
    subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-nostdin", "-y", "-f", "lavfi",
                    "-i", f"testsrc2=duration={seconds}:size=320x240:rate=25,"
                    "noise=alls=100:allf=t+u", "-c:v", "mpeg4", "-q:v", "2", str(path)],
                   check=True, timeout=120)
    return path


def put_part(url: str, path: Path, offset: int, size: int) -> requests.Response:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return requests.put(url, data=handle.read(size), timeout=60)


def start_upload(server_url: str, headers: dict[str, str], path: Path, name: str | None = None,
                 sha256: str | None = None) -> requests.Response:
    body: dict[str, Any] = {"filename": name or path.name, "size": path.stat().st_size}
    if sha256:
        body["sha256"] = sha256
    return requests.post(server_url + "/uploads", json=body, headers=headers, timeout=30)


def send_parts(upload: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    done, offset = [], 0
    for part in upload["parts"]:
        response = put_part(part["url"], path, offset, part["size"])
        assert response.status_code == 200, response.text
        done.append({"part_number": part["part_number"],
                     "etag": response.headers["ETag"].strip('"')})
        offset += part["size"]
    return done


def upload(server_url: str, headers: dict[str, str], path: Path,
           name: str | None = None) -> dict[str, Any]:
    """Upload ``path`` whole; returns the completion's answer (with source_url) and
    the upload (``"upload"``)."""
    started = start_upload(server_url, headers, path, name)
    assert started.status_code == 201, started.text
    created = started.json()
    parts = send_parts(created, path)
    done = requests.post(f"{server_url}/uploads/{created['upload_id']}/complete",
                         json={"parts": parts}, headers=headers, timeout=120)
    assert done.status_code == 200, done.text
    return {**done.json(), "upload": created}


def download(server_url: str, headers: dict[str, str], job_id: str, target: Path) -> Path:
    """GET /jobs/{id}/output (302), then the URL it names, without an API key."""
    answer = requests.get(f"{server_url}/jobs/{job_id}/output", headers=headers,
                          allow_redirects=False, timeout=30)
    assert answer.status_code == 302, answer.text
    with requests.get(answer.headers["Location"], stream=True, timeout=60) as response:
        assert response.status_code == 200, response.text
        with open(target, "wb") as handle:
            for chunk in response.iter_content(CHUNK):
                handle.write(chunk)
    return target
