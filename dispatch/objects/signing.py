"""Signed URLs of the embedded store: an HMAC-SHA256 of the method, the target (the
object or the part) and the expiry, with a secret kept beside the state and never in
a URL or a log. A URL made for one object, method or time cannot be used for
another; comparisons take constant time."""

from __future__ import annotations

import hashlib
import hmac
import time

from dispatch.domain.errors import DispatchError


class BadSignature(DispatchError):
    code = "forbidden"
    status = 403


class Signer:
    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"distconv-files\0" + secret.encode()).digest()

    def sign(self, method: str, target: str, expires_at: int) -> str:
        message = f"{method}\n{target}\n{expires_at}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def query(self, method: str, target: str, expires_at: int) -> str:
        return f"expires={expires_at}&signature={self.sign(method, target, expires_at)}"

    def verify(self, method: str, target: str, expires: str | None,
               signature: str | None, now: float | None = None) -> None:
        """Raise BadSignature (403) unless the URL was signed for this method and
        target and has not expired."""
        if not expires or not signature or not expires.isdigit():
            raise BadSignature("this URL is not signed")
        expected = self.sign(method, target, int(expires))
        if not hmac.compare_digest(expected, signature):
            raise BadSignature("this URL's signature is not valid for this object")
        if int(expires) < (time.time() if now is None else now):
            raise BadSignature("this URL has expired; ask the server for a new one")
