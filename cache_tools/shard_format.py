"""Byte layout of one zarr v3 shard as this project writes and reads it.

A shard file is the inner chunks' raw little-endian bytes followed by the shard index: one
(offset, nbytes) uint64 pair per inner chunk in C order, then the CRC32C of those pairs (4 bytes,
little endian). Chunks that hold no rows (past the end of the array) are marked with 2**64-1.
"Dense" means every present chunk sits at ``i * chunk_nbytes`` with full size, so the shard's data
is one contiguous (rows, width) array that can be memory-mapped.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import crc32c
import numpy as np

from cache_tools.errors import ShardDamagedError

EMPTY = np.uint64(2**64 - 1)
CRC_BYTES = 4


class ShardIndex(NamedTuple):
    """Parsed, CRC-checked index of one shard file."""

    offsets: np.ndarray
    """(chunks_per_shard,) uint64 byte offsets; EMPTY for absent chunks."""
    nbytes: np.ndarray
    """(chunks_per_shard,) uint64 byte counts; EMPTY for absent chunks."""
    dense: bool
    """True when present chunks are full-size, in order, from offset 0 (memory-mappable)."""
    file_size: int
    """Size of the shard file in bytes."""


def index_nbytes(chunks_per_shard: int) -> int:
    return 16 * chunks_per_shard + CRC_BYTES


def encode_index(n_present: int, chunks_per_shard: int, chunk_nbytes: int) -> bytes:
    """Index of a dense shard whose first ``n_present`` chunks hold data."""
    pairs = np.full((chunks_per_shard, 2), EMPTY, dtype="<u8")
    starts = np.arange(n_present, dtype=np.uint64) * np.uint64(chunk_nbytes)
    pairs[:n_present, 0] = starts
    pairs[:n_present, 1] = chunk_nbytes
    raw = pairs.tobytes()
    return raw + crc32c.crc32c(raw).to_bytes(CRC_BYTES, "little")


def read_index(path: Path, *, chunks_per_shard: int, chunk_nbytes: int, n_present: int,
               shard: int, array: str) -> ShardIndex:
    """Read and check the index at the end of ``path``; raise ShardDamagedError naming the shard."""
    def damaged(why: str) -> ShardDamagedError:
        return ShardDamagedError(f"shard {shard} of '{array}' ({path}) is damaged: {why}", shard=shard, array=array)

    want = index_nbytes(chunks_per_shard)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if size < want:
                raise damaged(f"file is {size} bytes, shorter than its {want}-byte index")
            f.seek(size - want)
            tail = f.read(want)
    except FileNotFoundError:
        raise damaged("file is missing") from None
    raw, crc = tail[:-CRC_BYTES], int.from_bytes(tail[-CRC_BYTES:], "little")
    if crc32c.crc32c(raw) != crc:
        raise damaged("index CRC32C mismatch (truncated or overwritten)")
    pairs = np.frombuffer(raw, dtype="<u8").reshape(chunks_per_shard, 2)
    offsets, nbytes = pairs[:, 0].copy(), pairs[:, 1].copy()
    present = offsets != EMPTY
    data_end = size - want
    ends = offsets[present] + nbytes[present]
    if present.any() and int(ends.max()) > data_end:
        raise damaged("index points past the end of the chunk data")
    if int(present.sum()) < n_present:
        # a chunk holding real rows was never written: it would silently read back as zeros
        raise damaged(f"only {int(present.sum())} of {n_present} chunks present")
    expected = np.arange(n_present, dtype=np.uint64) * np.uint64(chunk_nbytes)
    dense = bool(
        present[:n_present].all() and not present[n_present:].any()
        and np.array_equal(offsets[:n_present], expected)
        and (nbytes[:n_present] == chunk_nbytes).all()
        and data_end == n_present * chunk_nbytes
    )
    return ShardIndex(offsets, nbytes, dense, size)


def file_crc32c(path: Path, block: int = 1 << 24) -> int:
    """CRC32C of a whole file, streamed."""
    value = 0
    with open(path, "rb") as f:
        while True:
            buf = f.read(block)
            if not buf:
                return value
            value = crc32c.crc32c(buf, value)
