"""The stores that keep uploaded sources and engines' outputs, behind one port
(``port.ObjectStore``): ``local`` (a folder this server serves through signed URLs)
and ``s3`` (any S3-compatible service, through presigned URLs)."""

from __future__ import annotations

import os

from dispatch.config.secret_file import kept_secret
from dispatch.config.settings import Settings
from dispatch.objects.local import LocalStore
from dispatch.objects.port import ObjectStore, PartsRejected, StoreError

__all__ = ["LocalStore", "ObjectStore", "PartsRejected", "StoreError", "open_store",
           "storage_dir"]


def storage_dir(settings: Settings) -> str:
    """The local store's folder: ``storage_dir``, else ``files/`` beside the state."""
    if settings.storage_dir:
        return settings.storage_dir
    return os.path.join(os.path.dirname(os.path.abspath(settings.state_file)), "files")


def open_store(settings: Settings) -> ObjectStore:
    """The store the settings name (not checked: ``ObjectStore.check`` does that)."""
    if settings.storage.startswith("s3://"):
        from dispatch.objects.s3 import S3Store

        return S3Store(settings)
    return LocalStore(storage_dir(settings), lambda: kept_secret(
        settings.state_file + ".files-secret", "file store's URL-signing secret"))
