"""Exceptions raised by the activation store; each message names the store, shard and what to do."""
from __future__ import annotations


class StoreError(RuntimeError):
    """The store is missing, malformed, incomplete or was written with another configuration."""


class ShardDamagedError(StoreError):
    """A committed shard fails its index CRC, size, layout or checksum check."""

    def __init__(self, message: str, *, shard: int, array: str) -> None:
        super().__init__(message)
        self.shard = shard
        self.array = array
