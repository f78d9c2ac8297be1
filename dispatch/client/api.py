"""The dispatch server's API as the client uses it: the key on every request, retries
with backoff while the server cannot be reached, and every refusal turned into the
server's own message (never a traceback)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from dispatch.client.settings import Settings

if TYPE_CHECKING:
    import httpx

# Exit statuses (README "distconv"): the command's outcome, whatever raised it.
DONE, FAILED, USAGE, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130


class Failure(Exception):
    """What ends a command: its message (printed on stderr) and exit status."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.message, self.status = message, status


class Refused(Failure):
    """The server answered with an error: its status, code and message."""

    def __init__(self, http_status: int, code: str, message: str) -> None:
        super().__init__(f"the server refused: {message} ({http_status} {code})")
        self.http_status, self.code = http_status, code


def error_of(response: httpx.Response) -> Refused:
    """The contract's error shape read from a response (or what there is of it)."""
    try:
        error = response.json()["error"]
        return Refused(response.status_code, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        return Refused(response.status_code, "http_error",
                       text or response.reason_phrase or "no message")


def job_path(job_id: str) -> str:
    """A job's path, whatever a person typed as its id."""
    return f"/jobs/{quote(job_id, safe='')}"


def backoff(attempt: int) -> float:
    """0.5 s, 1 s, 2 s, 4 s, then 5 s between attempts."""
    return min(0.5 * 2 ** attempt, 5.0)


class Api:
    def __init__(self, settings: Settings) -> None:
        import httpx

        self.settings = settings
        self.http = httpx.Client(
            base_url=settings.server, timeout=httpx.Timeout(30.0, connect=5.0),
            headers={"X-API-Key": settings.require_key(), "User-Agent": "distconv"})

    def close(self) -> None:
        self.http.close()

    def send(self, method: str, path: str, json: Any = None,
             headers: dict[str, str] | None = None, accept: tuple[int, ...] = ()
             ) -> httpx.Response:
        """The response to one request, after retries: a connection error or a 503
        (queue full, a store that cannot write) is tried again with backoff up to
        ``retries`` times; the answer must be 2xx, 3xx or in ``accept``."""
        import httpx

        attempt = 0
        while True:
            try:
                response = self.http.request(method, path, json=json, headers=headers)
            except httpx.TransportError as exc:
                if attempt >= self.settings.retries:
                    raise Failure(
                        f"cannot reach the server at {self.settings.server} "
                        f"({exc.__class__.__name__}: {exc or 'no answer'}) after "
                        f"{attempt + 1} attempts", UNREACHABLE) from None
                time.sleep(backoff(attempt))
                attempt += 1
                continue
            if response.status_code == 503 and attempt < self.settings.retries:
                delay = response.headers.get("Retry-After", "")
                time.sleep(min(float(delay), 30.0) if delay.isdigit() else backoff(attempt))
                attempt += 1
                continue
            if response.status_code < 400 or response.status_code in accept:
                return response
            raise error_of(response)

    def get(self, path: str, **params: Any) -> Any:
        query = {key: value for key, value in params.items() if value is not None}
        if query:
            from urllib.parse import urlencode
            path = f"{path}?{urlencode(query)}"
        return self.send("GET", path).json()

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(job_path(job_id))
        return result
