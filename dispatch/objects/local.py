"""The embedded store: a folder the server serves itself through signed URLs
(``dispatch.http.files``). Bytes are streamed both ways in fixed-size chunks and never
held in memory; every file is written under a temporary name, fsynced and renamed,
so a crash (kill -9) leaves whole files or none.

Layout under the folder: ``objects/<key>`` (what is served), ``parts/<multipart
id>/<n>`` with ``<n>.etag`` (a part stays a file of its own until the upload is
completed, so a server restart keeps the parts already received), ``meta/<name>.json``
(manifests and the SHA-256 index).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from dispatch.domain.objects import OBJECT_KEY
from dispatch.objects.port import PartsRejected, StoreError
from dispatch.objects.signing import Signer

CHUNK = 1 << 20
TEMP_MARK = ".tmp-"


class BadBody(Exception):
    """A part's body is not the size it was signed for (cut short or too long)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(final: Path, chunks: Iterator[bytes]) -> None:
    """Write ``chunks`` to a temporary file beside ``final``, fsync, rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f"{final.name}{TEMP_MARK}{uuid.uuid4().hex}")
    try:
        with open(temporary, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_dir(final.parent)


def _copy(source: IO[bytes], target: IO[bytes]) -> None:
    """Append ``source`` to ``target`` inside the kernel (copy_file_range: no bytes
    through Python, a reflink where the file system has them); a plain copy where
    the call is not available."""
    copied = 0
    try:
        while count := os.copy_file_range(source.fileno(), target.fileno(), 1 << 30):
            copied += count
        return
    except OSError:
        if copied:  # failed midway: not a missing system call
            raise
    shutil.copyfileobj(source, target, CHUNK)


class LocalStore:
    name = "local"

    def __init__(self, root: str, secret: Callable[[], str]) -> None:
        self.root = Path(root).resolve()
        self._secret = secret
        self._signer: Signer | None = None

    @property
    def signer(self) -> Signer:
        """Read (or made) on first use: a service that never stores a file never
        writes the secret."""
        if self._signer is None:
            self._signer = Signer(self._secret())
        return self._signer

    # ------------------------------------------------------------ paths

    def object_path(self, key: str) -> Path:
        """The file of ``key``; the key is one the server made (``OBJECT_KEY``), so it
        cannot leave ``objects/``."""
        if not OBJECT_KEY.fullmatch(key):
            raise StoreError("not an object key of this store")
        return self.root / "objects" / key

    def _part_path(self, multipart_id: str, part_number: int) -> Path:
        if not multipart_id.isalnum():
            raise StoreError("not an upload of this store")
        return self.root / "parts" / multipart_id / str(part_number)

    def _meta_path(self, name: str) -> Path:
        if ".." in name or name.startswith("/"):
            raise StoreError("not a record name")
        return self.root / "meta" / f"{name}.json"

    # ------------------------------------------------------------ the port

    def check(self) -> None:
        try:
            for folder in ("objects", "parts", "meta"):
                (self.root / folder).mkdir(parents=True, exist_ok=True)
            probe = self._meta_path("probe")
            self.put_meta("probe", {"probe": True})
            if self.get_meta("probe") != {"probe": True}:
                raise StoreError(f"the store folder {self.root} does not read back")
            probe.unlink()
        except OSError as exc:
            raise StoreError(f"cannot write the store folder {self.root}: "
                             f"{exc.strerror or exc}") from None

    def start_multipart(self, key: str) -> str:
        multipart_id = uuid.uuid4().hex
        (self.root / "parts" / multipart_id).mkdir(parents=True, exist_ok=True)
        return multipart_id

    def part_url(self, key: str, multipart_id: str, part_number: int, size: int,
                 expires_at: int, base: str) -> str:
        target = f"parts/{multipart_id}/{part_number}/{size}"
        return f"{base}files/{target}?{self.signer.query('PUT', target, expires_at)}"

    def receive_part(self, multipart_id: str, part_number: int, size: int,
                     body: IO[bytes]) -> str:
        """Store a part's ``size`` bytes read from ``body`` (which ends there: the
        HTTP side limits it); returns its ETag. A body cut short stores nothing
        (BadBody); a part sent again replaces the first."""
        folder = self._part_path(multipart_id, part_number).parent
        if not folder.is_dir():
            raise StoreError("no such upload (completed, abandoned or removed)")
        digest = hashlib.md5(usedforsecurity=False)

        def chunks() -> Iterator[bytes]:
            left = size
            while left > 0:
                chunk = body.read(min(CHUNK, left))
                if not chunk:
                    raise BadBody(f"the part ended after {size - left} of {size} bytes")
                left -= len(chunk)
                digest.update(chunk)
                yield chunk

        _write_atomically(self._part_path(multipart_id, part_number), chunks())
        etag = digest.hexdigest()
        _write_atomically(folder / f"{part_number}.etag", iter([etag.encode()]))
        return etag

    def complete_multipart(self, key: str, multipart_id: str,
                           parts: list[tuple[int, str]]) -> str | None:
        final = self.object_path(key)
        sources = []
        for number, etag in parts:
            path = self._part_path(multipart_id, number)
            try:
                stored = (path.parent / f"{number}.etag").read_text().strip()
            except FileNotFoundError:
                raise PartsRejected(f"part {number} was never uploaded") from None
            if stored != etag.strip('"'):
                raise PartsRejected(f"part {number}'s etag is not the uploaded part's")
            sources.append(path)
        digest = hashlib.sha256()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        for path in sources:  # hashed from the parts (just written: in the page cache)
            with open(path, "rb", buffering=0) as handle:
                while count := handle.readinto(buffer):
                    digest.update(view[:count])
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f"{final.name}{TEMP_MARK}{uuid.uuid4().hex}")
        try:
            with open(temporary, "wb") as out:
                for path in sources:
                    with open(path, "rb") as handle:
                        _copy(handle, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, final)
        finally:
            if temporary.exists():
                temporary.unlink()
        _fsync_dir(final.parent)
        self.abort_multipart(key, multipart_id)
        return digest.hexdigest()

    def abort_multipart(self, key: str, multipart_id: str) -> None:
        shutil.rmtree(self._part_path(multipart_id, 1).parent, ignore_errors=True)

    def get_url(self, key: str, expires_at: int, base: str, filename: str) -> str:
        target = f"o/{key}"
        return f"{base}files/{quote(target)}?{self.signer.query('GET', target, expires_at)}"

    def head(self, key: str) -> int | None:
        try:
            return self.object_path(key).stat().st_size
        except FileNotFoundError:
            return None

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        with open(self.object_path(key), "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def delete(self, key: str) -> None:
        path = self.object_path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        try:
            path.parent.rmdir()  # the key's own folder, empty now
        except OSError:
            pass

    def put_meta(self, name: str, data: dict[str, Any]) -> None:
        _write_atomically(self._meta_path(name), iter([json.dumps(data).encode()]))

    def get_meta(self, name: str) -> dict[str, Any] | None:
        try:
            with open(self._meta_path(name), encoding="utf-8") as handle:
                loaded: dict[str, Any] = json.load(handle)
                return loaded
        except FileNotFoundError:
            return None

    def delete_meta(self, name: str) -> None:
        try:
            self._meta_path(name).unlink()
        except FileNotFoundError:
            pass

    def list_meta(self, prefix: str) -> Iterator[str]:
        folder = self.root / "meta"
        for path in folder.glob(f"{prefix}*.json"):
            yield path.relative_to(folder).as_posix()[:-len(".json")]

    def list_objects(self, prefix: str) -> Iterator[tuple[str, float]]:
        folder = self.root / "objects"
        for path in (folder / prefix).rglob("*"):
            if path.is_file() and TEMP_MARK not in path.name:
                yield path.relative_to(folder).as_posix(), path.stat().st_mtime
