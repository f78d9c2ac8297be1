"""Stored objects' names and URL forms, as pure rules: the server makes every object
key (a client's file name is reduced to a safe last part, never a path), and a stored
object is named in a job by ``store://KEY``.

- sources: ``sources/<upload id>/<safe name>``; outputs:
  ``outputs/<token>/<safe job id>-<attempt>.<extension>``;
- an upload id or token: 32 lowercase hex digits, made by the server.
"""

from __future__ import annotations

import re
import unicodedata

STORE_SCHEME = "store://"
_ID = r"[0-9a-f]{32}"
_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
OBJECT_KEY = re.compile(rf"^(?:sources|outputs)/{_ID}/{_NAME}$")
UPLOAD_ID = re.compile(rf"^{_ID}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MIN_PART_MB = 5
MAX_PARTS = 10000  # S3's limit on the parts of one multipart upload


def safe_name(filename: str, fallback: str = "file") -> str:
    """The last part of ``filename`` with only letters, digits and ``._-``, no leading
    dot, at most 128 characters: ``../../etc/passwd`` becomes ``passwd``."""
    last = re.split(r"[\\/]", filename)[-1]
    ascii_name = unicodedata.normalize("NFKD", last).encode("ascii", "ignore").decode()
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_name).lstrip("._-")
    if len(cleaned) > 128:
        stem, dot, extension = cleaned.rpartition(".")
        cleaned = (stem[:120] + dot + extension[:7]) if dot and len(extension) <= 7 \
            else cleaned[:128]
    return cleaned or fallback


def store_url(key: str) -> str:
    return STORE_SCHEME + key


def stored_key(url: str | None) -> str | None:
    """The object key of a ``store://`` URL, None for any other URL or a key the
    server would not have made."""
    if not url or not url.startswith(STORE_SCHEME):
        return None
    key = url[len(STORE_SCHEME):]
    return key if OBJECT_KEY.fullmatch(key) else None


def part_sizes(size: int, part_size: int) -> list[int]:
    """The size of each part of a ``size``-byte upload in ``part_size`` parts (one
    part for an empty file)."""
    if size == 0:
        return [0]
    full, rest = divmod(size, part_size)
    return [part_size] * full + ([rest] if rest else [])


def part_size_for(size: int, part_size: int) -> int:
    """``part_size``, doubled until the upload fits in ``MAX_PARTS`` parts."""
    while size > part_size * MAX_PARTS:
        part_size *= 2
    return part_size
