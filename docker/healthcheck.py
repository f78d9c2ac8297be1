"""Docker HEALTHCHECK for the DistConv images, with nothing but the standard library
(the images carry no curl). Exit 0 when healthy, 1 otherwise (Docker's convention).

``healthcheck.py server``: the server in this container answers ``GET /health`` with 200.
It is reached on DISTCONV_PORT (default 8080) at DISTCONV_HOST, or at 127.0.0.1 when
that is a wildcard address.

``healthcheck.py engine``: the server this engine works for lists it as not offline,
i.e. its heartbeats arrive (``GET /engines/{id}`` with the engine's key). An engine-role
key may not read engines (403): then the check is that the server answers ``/health``.
Server URL, key and engine id come from the same DISTCONV_* variables the engine reads.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT = 4.0
WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def health_url() -> str:
    host = os.environ.get("DISTCONV_HOST", "").strip()
    host = "127.0.0.1" if host in WILDCARDS else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = os.environ.get("DISTCONV_PORT", "").strip() or "8080"
    return f"http://{host}:{port}/health"


def _server() -> str:
    return (os.environ.get("DISTCONV_SERVER", "").strip() or "http://127.0.0.1:8080").rstrip("/")


def _api_key() -> str:
    path = os.environ.get("DISTCONV_API_KEY_FILE", "").strip()
    if path:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    return os.environ.get("DISTCONV_API_KEY", "").strip()


def engine_url() -> str:
    engine_id = os.environ.get("DISTCONV_ENGINE_ID", "").strip() or socket.gethostname()
    return f"{_server()}/engines/{urllib.parse.quote(engine_id, safe='')}"


def check(role: str) -> str | None:
    """None when healthy, else the reason."""
    if role == "server":
        status, body = _get(health_url())
        return None if status == 200 else f"/health answered {status}: {body[:200]!r}"
    status, body = _get(engine_url(), {"X-API-Key": _api_key()})
    if status == 403:
        status, body = _get(f"{_server()}/health")
        return None if status == 200 else f"the server's /health answered {status}"
    if status != 200:
        return f"the server answered {status} for this engine: {body[:200]!r}"
    engine_status = json.loads(body).get("status")
    return None if engine_status != "offline" else "the server lists this engine as offline"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("server", "engine"):
        print("usage: healthcheck.py server|engine", file=sys.stderr)
        return 2
    try:
        reason = check(argv[1])
    except (OSError, ValueError) as exc:
        reason = f"{exc.__class__.__name__}: {exc}"
    if reason:
        print(f"unhealthy: {reason}")
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
