"""An S3-compatible store (AWS S3, MinIO, SeaweedFS, Ceph) through boto3: clients and
engines get presigned URLs (upload_part, get_object), the server alone holds the
credentials. Objects are ``PREFIX/KEY``; records are ``PREFIX/meta/NAME.json``.

Credentials come from ``storage_credentials_file`` (an INI file with
``aws_access_key_id`` and ``aws_secret_access_key``) or boto3's standard sources
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``...). They are registered with the log
redaction, and botocore's own debug lines (which hold signatures) are never written.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from dispatch.config.settings import Settings
from dispatch.objects.port import PartsRejected, StoreError
from dispatch.runtime.logs import add_secrets

CHUNK = 1 << 20
_PARTS_REFUSED = {"InvalidPart", "InvalidPartOrder", "NoSuchUpload", "EntityTooSmall"}
_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden",
            "403", "InvalidToken", "ExpiredToken"}

for _name in ("botocore", "boto3", "s3transfer"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _credentials(path: str | None) -> dict[str, str]:
    if path is None:
        return {}
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise StoreError(f"cannot read storage_credentials_file {path}: "
                         f"{exc.strerror or exc}") from None
    section = parser["default"] if parser.has_section("default") else next(
        (parser[name] for name in parser.sections()), None)
    if section is None or not section.get("aws_access_key_id") \
            or not section.get("aws_secret_access_key"):
        raise StoreError(f"storage_credentials_file {path} has no aws_access_key_id and "
                         "aws_secret_access_key")
    found = {"aws_access_key_id": section["aws_access_key_id"].strip(),
             "aws_secret_access_key": section["aws_secret_access_key"].strip()}
    return found


class S3Store:
    name = "s3"

    def __init__(self, settings: Settings) -> None:
        bucket, _, prefix = settings.storage[len("s3://"):].partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint = settings.storage_endpoint or "AWS S3"
        credentials = _credentials(settings.storage_credentials_file)
        session = boto3.session.Session(**credentials)  # type: ignore[arg-type]
        found = session.get_credentials()
        if found is not None:
            add_secrets([found.secret_key or ""])
        self.client = session.client(
            "s3", endpoint_url=settings.storage_endpoint,
            region_name=settings.storage_region or "us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          connect_timeout=5, read_timeout=60,
                          retries={"max_attempts": 3, "mode": "standard"}))

    @contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        """Store failures as StoreError naming what failed, never with a URL."""
        try:
            yield
        except ClientError as exc:
            code = _code(exc)
            if code == "NoSuchBucket":
                raise StoreError(f"bucket {self.bucket!r} does not exist at "
                                 f"{self.endpoint}") from None
            if code in _REFUSED:
                raise StoreError(f"credentials refused by {self.endpoint} ({code}) "
                                 f"when {what}") from None
            raise StoreError(f"{what} failed: {code or 'error'}") from None
        except NoCredentialsError:
            raise StoreError("no credentials for the S3 store: set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY or storage_credentials_file") from None
        except BotoCoreError as exc:
            raise StoreError(f"{what} failed: cannot reach {self.endpoint} "
                             f"({exc.__class__.__name__})") from None

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _meta_key(self, name: str) -> str:
        return f"{self.prefix}meta/{name}.json"

    @staticmethod
    def _ttl(expires_at: int) -> int:
        return max(1, expires_at - int(time.time()))

    # ------------------------------------------------------------ the port

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise StoreError(f"bucket {self.bucket!r} does not exist at "
                                 f"{self.endpoint}") from None
            with self._calls(f"reaching bucket {self.bucket!r}"):
                raise
        except BotoCoreError:
            with self._calls(f"reaching bucket {self.bucket!r}"):
                raise
        probe = self._meta_key(f"probe-{uuid.uuid4().hex}")
        with self._calls(f"writing to bucket {self.bucket!r}"):
            self.client.put_object(Bucket=self.bucket, Key=probe, Body=b"probe")
        with self._calls(f"reading from bucket {self.bucket!r}"):
            body = self.client.get_object(Bucket=self.bucket, Key=probe)["Body"].read()
            if body != b"probe":
                raise StoreError(f"bucket {self.bucket!r} does not read back what was written")
        with self._calls(f"deleting from bucket {self.bucket!r}"):
            self.client.delete_object(Bucket=self.bucket, Key=probe)

    def start_multipart(self, key: str) -> str:
        with self._calls("starting an upload"):
            answer = self.client.create_multipart_upload(Bucket=self.bucket, Key=self._key(key))
        return str(answer["UploadId"])

    def part_url(self, key: str, multipart_id: str, part_number: int, offset: int,
                 size: int, expires_at: int, base: str) -> str:
        with self._calls("signing a part URL"):
            return str(self.client.generate_presigned_url(
                "upload_part", ExpiresIn=self._ttl(expires_at),
                Params={"Bucket": self.bucket, "Key": self._key(key),
                        "UploadId": multipart_id, "PartNumber": part_number}))

    def complete_multipart(self, key: str, multipart_id: str,
                           parts: list[tuple[int, str]]) -> str | None:
        listed = [{"PartNumber": number, "ETag": f'"{etag.strip(chr(34))}"'}
                  for number, etag in parts]
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self._key(key), UploadId=multipart_id,
                MultipartUpload={"Parts": listed})
        except ClientError as exc:
            if _code(exc) in _PARTS_REFUSED:
                raise PartsRejected(f"the store refused the parts ({_code(exc)})") from None
            with self._calls("completing an upload"):
                raise
        except BotoCoreError:
            with self._calls("completing an upload"):
                raise
        return None

    def abort_multipart(self, key: str, multipart_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key),
                                               UploadId=multipart_id)
        except ClientError as exc:
            if _code(exc) not in ("NoSuchUpload", "404"):
                with self._calls("removing an upload"):
                    raise

    def get_url(self, key: str, expires_at: int, base: str, filename: str) -> str:
        with self._calls("signing a download URL"):
            return str(self.client.generate_presigned_url(
                "get_object", ExpiresIn=self._ttl(expires_at),
                Params={"Bucket": self.bucket, "Key": self._key(key),
                        "ResponseContentDisposition": f'attachment; filename="{filename}"'}))

    def head(self, key: str) -> int | None:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            with self._calls("reading an object's size"):
                raise
        except BotoCoreError:
            with self._calls("reading an object's size"):
                raise
        return int(answer["ContentLength"])

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        with self._calls("reading an object"):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            for chunk in body.iter_chunks(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def delete(self, key: str) -> None:
        with self._calls("deleting an object"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def put_meta(self, name: str, data: dict[str, Any]) -> None:
        with self._calls("writing a record"):
            self.client.put_object(Bucket=self.bucket, Key=self._meta_key(name),
                                   Body=json.dumps(data).encode(),
                                   ContentType="application/json")

    def get_meta(self, name: str) -> dict[str, Any] | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._meta_key(name))["Body"]
            loaded: dict[str, Any] = json.loads(body.read())
            return loaded
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            with self._calls("reading a record"):
                raise
        except BotoCoreError:
            with self._calls("reading a record"):
                raise
        return None  # pragma: no cover - _calls always raises

    def delete_meta(self, name: str) -> None:
        with self._calls("deleting a record"):
            self.client.delete_object(Bucket=self.bucket, Key=self._meta_key(name))

    def _list(self, prefix: str) -> Iterator[dict[str, Any]]:
        with self._calls("listing the bucket"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                yield from page.get("Contents", [])

    def list_meta(self, prefix: str) -> Iterator[str]:
        start = f"{self.prefix}meta/"
        for item in self._list(start + prefix):
            name = item["Key"][len(start):]
            if name.endswith(".json"):
                yield name[:-len(".json")]

    def list_objects(self, prefix: str) -> Iterator[tuple[str, float]]:
        for item in self._list(self.prefix + prefix):
            yield item["Key"][len(self.prefix):], item["LastModified"].timestamp()
