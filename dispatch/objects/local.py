"""The embedded store: a folder the server serves itself through signed URLs
(``dispatch.http.files``). Bytes are streamed both ways through a reused buffer and
never held in memory; every file is written under a temporary name, fsynced and
renamed, so a crash (kill -9) leaves whole files or none.

Layout under the folder: ``objects/<key>`` (what is served), ``parts/<multipart id>/``
with ``data`` (the object being assembled: each part is written at its own offset, so
the completion renames it into ``objects/`` instead of copying the parts once more)
and ``<n>.done`` per part received (its ETag, offset and size, written once the part's
bytes are fsynced and removed before a part sent again is written, so a restart keeps
exactly the parts received whole), ``meta/<name>.json`` (manifests, the SHA-256 index).

A part's ETag is an opaque token of the write that stored it (not an MD5: the content
is checked by its SHA-256 at completion, which the running hash of ``running`` mostly
has ready by then). Writers of parts hold a shared lock on ``data``; the completion
takes it exclusively, so it never joins a part still being written.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dispatch.domain.objects import OBJECT_KEY
from dispatch.objects.intake import CHUNK, ReadInto, receive
from dispatch.objects.port import PartsRejected, StoreError
from dispatch.objects.running import RunningHashes
from dispatch.objects.signing import Signer

TEMP_MARK = ".tmp-"
GONE = "no such upload (completed, abandoned or removed)"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(final: Path, data: bytes, make_folder: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``final``, fsync, rename."""
    if make_folder:
        final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f"{final.name}{TEMP_MARK}{uuid.uuid4().hex}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_dir(final.parent)


def _hash_range(fd: int, digest: Any, start: int, end: int) -> None:
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while start < end:
        count = os.preadv(fd, [view[:min(CHUNK, end - start)]], start)
        if not count:
            raise PartsRejected(f"the parts end after {start} of {end} bytes")
        digest.update(view[:count])
        start += count


class LocalStore:
    name = "local"

    def __init__(self, root: str, secret: Callable[[], str]) -> None:
        self.root = Path(root).resolve()
        self._secret = secret
        self._signer: Signer | None = None
        self.running = RunningHashes()

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

    def _parts(self, multipart_id: str) -> Path:
        if not multipart_id.isalnum():
            raise StoreError("not an upload of this store")
        return self.root / "parts" / multipart_id

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
        folder = self._parts(multipart_id)
        folder.mkdir(parents=True, exist_ok=True)
        os.close(os.open(folder / "data", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        return multipart_id

    def part_url(self, key: str, multipart_id: str, part_number: int, offset: int,
                 size: int, expires_at: int, base: str) -> str:
        target = f"parts/{multipart_id}/{part_number}/{offset}/{size}"
        return f"{base}files/{target}?{self.signer.query('PUT', target, expires_at)}"

    def receive_part(self, multipart_id: str, part_number: int, offset: int, size: int,
                     read_into: ReadInto) -> str:
        """Store a part's ``size`` bytes, read with ``read_into``, at ``offset`` of the
        upload's file; returns its ETag. A body cut short leaves the part missing
        (BadBody); a part sent again replaces the first."""
        folder = self._parts(multipart_id)
        path = folder / "data"
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            raise StoreError(GONE) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    raise StoreError(GONE)
            except FileNotFoundError:
                raise StoreError(GONE) from None  # completed while this waited
            record = folder / f"{part_number}.done"
            if record.exists():  # gone before a byte changes: never an old record
                record.unlink()  # over new bytes, even after a crash
                _fsync_dir(folder)
            hashed, write = self.running.begin(multipart_id, part_number)
            etag = None
            try:
                receive(fd, offset, size, read_into, hashed)
                etag = secrets.token_hex(16)
                _write_atomically(record, f"{etag} {offset} {size}".encode(),
                                  make_folder=False)
            finally:
                self.running.end(multipart_id, part_number, write, hashed, etag)
            return etag
        finally:
            os.close(fd)  # and with it the lock

    def _received(self, folder: Path, parts: list[tuple[int, str]]) -> tuple[int, list[int]]:
        """Check the parts named at completion against those received, in order and
        end to end; returns (the size, the offset of each)."""
        offsets, end = [], 0
        for number, etag in parts:
            try:
                token, offset, size = (folder / f"{number}.done").read_text().split()
            except (FileNotFoundError, ValueError):  # (ValueError: not a whole record)
                raise PartsRejected(f"part {number} was never uploaded whole") from None
            if token != etag.strip('"'):
                raise PartsRejected(f"part {number}'s etag is not the uploaded part's")
            if int(offset) != end:
                raise PartsRejected(f"part {number} does not follow the part before it")
            offsets.append(end)
            end += int(size)
        return end, offsets

    def complete_multipart(self, key: str, multipart_id: str,
                           parts: list[tuple[int, str]]) -> str | None:
        folder = self._parts(multipart_id)
        final = self.object_path(key)
        try:
            fd = os.open(folder / "data", os.O_RDWR)
        except FileNotFoundError:
            raise PartsRejected("its parts are no longer in the store") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PartsRejected("a part is still being sent; complete the upload "
                                    "once every part's PUT has answered") from None
            size, offsets = self._received(folder, parts)
            if os.fstat(fd).st_size != size:
                raise PartsRejected(f"the parts hold {os.fstat(fd).st_size} bytes, "
                                    f"not {size}")
            tokens = {number: etag.strip('"') for number, etag in parts}
            digest, first = self.running.take(multipart_id, tokens)
            if first <= len(parts):  # what the running hash has not seen
                _hash_range(fd, digest, offsets[first - 1], size)
            os.fsync(fd)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(folder / "data", final)
            _fsync_dir(final.parent)
        finally:
            os.close(fd)
        self.abort_multipart(key, multipart_id)
        return str(digest.hexdigest())

    def abort_multipart(self, key: str, multipart_id: str) -> None:
        self.running.forget(multipart_id)
        shutil.rmtree(self._parts(multipart_id), ignore_errors=True)

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
        with open(self.object_path(key), "rb", buffering=0) as handle:
            _hash_range(handle.fileno(), digest, 0, os.fstat(handle.fileno()).st_size)
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
        _write_atomically(self._meta_path(name), json.dumps(data).encode())

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
