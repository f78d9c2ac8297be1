"""The memory backend: every record in this process's memory, under one lock, made
durable by a ``store.Store`` (the journal) that only this backend sees."""

from dispatch.storage.memory.backend import MemoryBackend

__all__ = ["MemoryBackend"]
