"""Files in and out: uploads of sources, engines' outputs, the URLs that read them,
and their retention, over the ``ObjectStore`` port (``dispatch.objects.port``).

An upload's manifest (its key, size, parts and state) is a small record in the store
itself, so an upload survives a server restart (kill -9 included) and its parts can be
sent again until it is completed or abandoned (a day). Object keys are made here,
never taken from a client.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

from dispatch.config.settings import Settings
from dispatch.domain import errors, rules
from dispatch.domain.models import FINISHED_STATUSES, Job, format_time
from dispatch.domain.objects import (
    MIN_PART_MB,
    UPLOAD_ID,
    part_size_for,
    part_sizes,
    safe_name,
    store_url,
    stored_key,
)
from dispatch.objects.port import ObjectStore, PartsRejected, StoreError
from dispatch.service.ports import Clock, ServicePart, UnitOfWork

log = logging.getLogger("dispatch.files")

UPLOAD_LIFETIME = 86400  # an upload not completed within a day is abandoned
SOURCE_URL_LIFETIME = 86400  # an engine's source URL lasts the whole job
DOWNLOAD_LIFETIME = 3600  # a client's download link


def _store_failed(exc: StoreError) -> errors.Unavailable:
    return errors.Unavailable(f"the file store is unavailable: {exc}")


class Files(ServicePart):
    def __init__(self, settings: Settings, uow: UnitOfWork, clock: Clock,
                 store: ObjectStore) -> None:
        super().__init__(settings, uow, clock)
        self.store = store
        self.part_bytes = max(MIN_PART_MB, settings.upload_part_mb) << 20

    # ------------------------------------------------------------ uploads

    def create_upload(self, filename: str, size: int, sha256: str | None,
                      base: str) -> tuple[dict[str, Any], bool]:
        """A new upload (its part URLs), or, when the store already holds content with
        this SHA-256 and size, that content's ``source_url`` (False: nothing to send)."""
        limit = int(self.settings.max_upload_gb * 1e9)
        if size > limit:
            raise errors.Invalid({"size": [f"{size} bytes is over the {limit}-byte "
                                           "upload limit (max_upload_gb)"]})
        try:
            if sha256 is not None:
                known = self.store.get_meta(f"sha256/{sha256}")
                if known is not None and known.get("size") == size \
                        and self.store.head(known["key"]) == size:
                    return {"upload_id": None, "source_url": store_url(known["key"]),
                            "parts": [], "size": size, "expires_at": None}, False
            upload_id = uuid.uuid4().hex
            key = f"sources/{upload_id}/{safe_name(filename)}"
            manifest = self._open(upload_id, key, size, {"kind": "source", "sha256": sha256,
                                                         "filename": filename[:255]})
        except StoreError as exc:
            raise _store_failed(exc) from None
        log.info("upload %s started: %d bytes to %s", upload_id, size, key)
        return self._answer(manifest, base), True

    def _open(self, upload_id: str, key: str, size: int,
              extra: dict[str, Any]) -> dict[str, Any]:
        manifest = {"upload_id": upload_id, "key": key, "size": size,
                    "part_size": part_size_for(size, self.part_bytes),
                    "multipart_id": self.store.start_multipart(key),
                    "expires_at": int(self.now()) + UPLOAD_LIFETIME,
                    "state": "open", **extra}
        self.store.put_meta(f"uploads/{upload_id}", manifest)
        return manifest

    def _answer(self, manifest: dict[str, Any], base: str) -> dict[str, Any]:
        key, expires = manifest["key"], manifest["expires_at"]
        parts, offset = [], 0
        for number, size in enumerate(part_sizes(manifest["size"], manifest["part_size"]), 1):
            parts.append({"part_number": number,
                          "url": self.store.part_url(key, manifest["multipart_id"], number,
                                                     offset, size, expires, base),
                          "size": size})
            offset += size
        return {"upload_id": manifest["upload_id"], "source_url": store_url(key),
                "parts": parts, "size": manifest["size"],
                "expires_at": format_time(expires)}

    def _manifest(self, upload_id: str) -> dict[str, Any]:
        manifest = self.store.get_meta(f"uploads/{upload_id}") \
            if UPLOAD_ID.fullmatch(upload_id) else None
        if manifest is None:
            raise errors.NotFound(f"upload {upload_id!r} not found (never made, "
                                  "or abandoned and removed)")
        return manifest

    def describe_upload(self, upload_id: str, base: str) -> dict[str, Any]:
        """The upload with fresh part URLs (to resume it after an interruption)."""
        try:
            manifest = self._manifest(upload_id)
            if manifest["state"] != "open":
                raise errors.Conflict(f"upload {upload_id!r} is already completed")
            return self._answer(manifest, base)
        except StoreError as exc:
            raise _store_failed(exc) from None

    def complete_upload(self, upload_id: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
        try:
            manifest = self._manifest(upload_id)
            if manifest.get("kind") != "source":
                raise errors.NotFound(f"upload {upload_id!r} not found")
            sha256 = self._finish(manifest, parts, manifest.get("sha256"))
            # The way back from the object to its index entry first: an entry is
            # always removed with its object (``_remove``).
            self.store.put_meta(f"indexed/{upload_id}", {"sha256": sha256})
            self.store.put_meta(f"sha256/{sha256}",
                                {"key": manifest["key"], "size": manifest["size"]})
        except StoreError as exc:
            raise _store_failed(exc) from None
        return {"upload_id": upload_id, "source_url": store_url(manifest["key"]),
                "size": manifest["size"], "sha256": sha256}

    def _finish(self, manifest: dict[str, Any], parts: list[dict[str, Any]],
                expected_sha256: str | None) -> str:
        """Join the parts, check the object's size (and SHA-256 when one is
        expected); returns the SHA-256. Conflict (409) when the upload was completed
        already or its parts are not all there; nothing is stored then."""
        upload_id, key = manifest["upload_id"], manifest["key"]
        if manifest["state"] != "open":
            raise errors.Conflict(f"upload {upload_id!r} is already completed")
        count = len(part_sizes(manifest["size"], manifest["part_size"]))
        numbers = [part["part_number"] for part in parts]
        if sorted(numbers) != list(range(1, count + 1)):
            raise errors.Conflict(f"upload {upload_id!r} has parts 1 to {count}; the "
                                  "completion must list each once")
        try:
            sha256 = self.store.complete_multipart(
                key, manifest["multipart_id"],
                sorted((part["part_number"], part["etag"]) for part in parts))
        except PartsRejected as exc:
            raise errors.Conflict(f"upload {upload_id!r} cannot be completed: {exc}") from None
        stored = self.store.head(key)
        if stored != manifest["size"]:
            self.store.delete(key)
            raise errors.Conflict(f"upload {upload_id!r} holds {stored} bytes, not the "
                                  f"{manifest['size']} announced; nothing was stored")
        if sha256 is None:
            sha256 = self.store.sha256(key)
        if expected_sha256 is not None and sha256 != expected_sha256:
            self.store.delete(key)
            raise errors.Conflict(f"upload {upload_id!r}'s SHA-256 is not the one "
                                  "announced; nothing was stored")
        manifest.update(state="completed", sha256=sha256)
        self.store.put_meta(f"uploads/{upload_id}", manifest)
        log.info("upload %s completed: %d bytes in %s", upload_id, manifest["size"], key)
        return sha256

    def check_source(self, source_url: str) -> None:
        """A ``store://`` source must name an object the store holds (a 400 at
        submission rather than a failed job later)."""
        if not source_url.startswith("store:"):
            return
        key = stored_key(source_url)
        try:
            if key is None or self.store.head(key) is None:
                raise errors.Invalid({"source_url": ["no such stored file: use the "
                                                     "source_url POST /uploads returned"]})
        except StoreError as exc:
            raise _store_failed(exc) from None

    # ------------------------------------------------------------ engines

    def engine_source(self, source_url: str, base: str) -> str:
        """The URL an engine GETs the source from: signed for a stored source, as it
        is for any other."""
        key = stored_key(source_url)
        if key is None:
            return source_url
        return self.store.get_url(key, int(self.now()) + SOURCE_URL_LIFETIME, base,
                                  key.rsplit("/", 1)[-1])

    def create_output_upload(self, job_id: str, engine_id: str | None, attempt: int | None,
                             data: dict[str, Any], base: str) -> dict[str, Any]:
        """An upload for the output of a job the engine holds."""
        with self.uow.read() as tx:
            job = tx.jobs.get(job_id)
        if job is None:
            raise errors.JobNotFound(job_id)
        rules.check_holder(job, engine_id, attempt, "upload the output of")
        upload_id = uuid.uuid4().hex
        extension = safe_name(data.get("extension") or "bin", "bin")
        key = f"outputs/{upload_id}/{safe_name(job_id, 'job')}-{job.attempt}.{extension}"
        try:
            manifest = self._open(upload_id, key, data["size"], {
                "kind": "output", "job_id": job_id, "attempt": job.attempt,
                "content_type": data.get("content_type") or "application/octet-stream"})
        except StoreError as exc:
            raise _store_failed(exc) from None
        log.info("output upload %s started: %d bytes to %s", upload_id, data["size"], key,
                 extra={"job_id": job_id})
        return self._answer(manifest, base)

    def finish_output(self, job_id: str, data: dict[str, Any]) -> dict[str, Any]:
        """Complete the output upload a completion names and check it; returns the
        job's ``output``. Conflict (409) when it is missing, incomplete, of another
        job, or not at ``output_url`` or of the size (or SHA-256) reported."""
        if "upload_id" not in data or "size" not in data:
            raise errors.Conflict("an output in the server's store is reported with its "
                                  "upload_id, parts and size")
        try:
            manifest = self._manifest(data["upload_id"])
            if manifest.get("kind") != "output" or manifest.get("job_id") != job_id \
                    or data["output_url"] != store_url(manifest["key"]):
                raise errors.Conflict(f"upload {data['upload_id']!r} is not the output "
                                      f"of job {job_id!r} at {data['output_url']}")
            if data["size"] != manifest["size"]:
                raise errors.Conflict(f"the output is {manifest['size']} bytes by its upload, "
                                      f"not the {data['size']} reported")
            if manifest["state"] == "open":
                sha256 = self._finish(manifest, data.get("parts") or [], data.get("sha256"))
            else:  # completed by an earlier report whose answer was lost
                sha256 = manifest["sha256"]
                if self.store.head(manifest["key"]) != manifest["size"]:
                    raise errors.Conflict("the output is no longer in the store")
        except StoreError as exc:
            raise _store_failed(exc) from None
        return {"size": manifest["size"], "sha256": sha256,
                "content_type": manifest["content_type"]}

    # ------------------------------------------------------------ clients

    def output_link(self, job: Job, base: str) -> str:
        """A time-limited URL of a completed job's stored output; Conflict (409) when
        it has none."""
        if job.status != "completed":
            raise errors.Conflict(f"job {job.job_id!r} is {job.status}, not completed")
        key = stored_key(job.output_url)
        try:
            if key is None or self.store.head(key) is None:
                raise errors.Conflict(f"job {job.job_id!r} has no stored output (its engine "
                                      "kept it elsewhere, or it was removed after "
                                      "output_retention_days)")
            return self.store.get_url(key, int(self.now()) + DOWNLOAD_LIFETIME, base,
                                      key.rsplit("/", 1)[-1])
        except StoreError as exc:
            raise _store_failed(exc) from None

    # ------------------------------------------------------------ retention

    def remove_outputs(self, jobs: Iterable[Job]) -> None:
        """Delete the stored outputs of jobs that are deleted (purged)."""
        for job in jobs:
            key = stored_key(job.output_url)
            if key is not None and key.startswith("outputs/"):
                self._remove(key)
                log.info("removed output %s", key, extra={"job_id": job.job_id})

    def _remove(self, key: str) -> None:
        """Delete a stored object and, for an uploaded source, its SHA-256 index entry
        (unless the entry names a later upload of the same content): the entry goes
        first, so a crash between the two leaves an object the next sweep removes
        again rather than an entry nothing removes."""
        parts = key.split("/")
        record = f"indexed/{parts[1]}" if parts[0] == "sources" and len(parts) > 2 else None
        indexed = self.store.get_meta(record) if record else None
        if indexed is not None:
            name = f"sha256/{indexed['sha256']}"
            entry = self.store.get_meta(name)
            if entry is not None and entry.get("key") == key:
                self.store.delete_meta(name)
        self.store.delete(key)
        if record is not None:
            self.store.delete_meta(record)

    def sweep(self) -> int:
        """Remove abandoned uploads, and stored outputs and uploaded sources older
        than ``output_retention_days`` (a source still waiting for its job is kept).
        Returns how many were removed."""
        now = self.now()
        removed = 0
        for name in list(self.store.list_meta("uploads/")):
            manifest = self.store.get_meta(name)
            if manifest is None or manifest["expires_at"] > now:
                continue
            if manifest["state"] == "open":
                self.store.abort_multipart(manifest["key"], manifest["multipart_id"])
                log.info("removed abandoned upload %s", manifest["upload_id"])
                removed += 1
            self.store.delete_meta(name)
        days = self.settings.output_retention_days
        if days <= 0:
            return removed
        cutoff = now - days * 86400
        in_use = self._sources_in_use()
        for prefix in ("outputs/", "sources/"):
            for key, modified in list(self.store.list_objects(prefix)):
                if modified < cutoff and key not in in_use:
                    self._remove(key)
                    log.info("removed %s after %g days", key, days)
                    removed += 1
        return removed

    def _sources_in_use(self) -> set[str]:
        keys: set[str] = set()
        with self.uow.read() as tx:
            jobs: list[Job] = list(tx.jobs.held())
            for status in ("pending", "processing"):
                offset = 0
                while True:
                    page, total = tx.jobs.page(status, offset, 1000)
                    jobs.extend(page)
                    offset += len(page)
                    if not page or offset >= total:
                        break
            # A chunked job's tasks read its source, or the copy its planner stored.
            jobs.extend(task for job in list(jobs) if job.chunk_seconds is not None
                        for task in tx.jobs.tasks_of(job.job_id))
        for job in jobs:
            if job.status not in FINISHED_STATUSES:
                key = stored_key(job.source_url)
                if key is not None:
                    keys.add(key)
        return keys
