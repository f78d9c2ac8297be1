"""What the service needs from an object store, whichever holds the bytes: the port
the embedded folder (``local``) and S3-compatible stores (``s3``) implement.

Uploads are multipart everywhere (a part can be retried; a large file is many parts);
clients and engines move bytes through signed URLs only, never with credentials. Small
JSON records (an upload's manifest, the SHA-256 index) are kept in the store too, so
the store alone describes what it holds, whichever database the jobs live in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class StoreError(Exception):
    """The store could not be reached or refused an operation (503)."""


class PartsRejected(Exception):
    """The parts given at completion are not those stored (a missing part, a wrong
    ETag or size); the message says which."""


class ObjectStore(Protocol):
    name: str

    def check(self) -> None:
        """Write, read and delete a probe object; raise StoreError naming what fails."""

    def start_multipart(self, key: str) -> str:
        """A new multipart upload to ``key``; returns the store's id for it."""

    def part_url(self, key: str, multipart_id: str, part_number: int, offset: int,
                 size: int, expires_at: int, base: str) -> str:
        """A URL the part's bytes (``size`` of them, from ``offset`` of the object)
        can be PUT to until ``expires_at`` (Unix seconds); ``base`` is the server's own
        URL, for stores the server serves itself."""

    def complete_multipart(self, key: str, multipart_id: str,
                           parts: list[tuple[int, str]]) -> str | None:
        """Join the parts (number, ETag) into the object; returns its SHA-256 when it
        was computed on the way (else None). PartsRejected when a part is missing or
        not the one uploaded; nothing is stored then."""

    def abort_multipart(self, key: str, multipart_id: str) -> None:
        """Forget an upload and its parts (no error when already gone)."""

    def get_url(self, key: str, expires_at: int, base: str, filename: str) -> str:
        """A URL the object can be read from (with ``Range``) until ``expires_at``."""

    def head(self, key: str) -> int | None:
        """The object's size, None when there is no such object."""

    def sha256(self, key: str) -> str:
        """The object's SHA-256, read through (streamed)."""

    def delete(self, key: str) -> None:
        """Remove the object (no error when already gone)."""

    def put_meta(self, name: str, data: dict[str, Any]) -> None:
        """Keep a small JSON record under ``name`` (replaced whole, atomically)."""

    def get_meta(self, name: str) -> dict[str, Any] | None: ...

    def delete_meta(self, name: str) -> None: ...

    def list_meta(self, prefix: str) -> Iterator[str]:
        """The names of the records under ``prefix``."""

    def list_objects(self, prefix: str) -> Iterator[tuple[str, float]]:
        """(key, last modified as Unix seconds) of the objects under ``prefix``."""
