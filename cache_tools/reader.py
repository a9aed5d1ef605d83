"""Reader: shards from the manifest, each index CRC-checked, dense shards memory-mapped zero-copy,
anything else read chunk by chunk through its index."""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

from cache_tools.errors import ShardDamagedError, StoreError
from cache_tools.layout import (ACTS, ARRAYS, LAYOUT_ATTR, MANIFEST_NAME, StoreSpec, check_array_layout,
                                read_group_attrs, shard_path)
from cache_tools.loader import MixingLoader
from cache_tools.manifest import Manifest, ShardRecord
from cache_tools.prefix import StorePrefix
from cache_tools.shard_format import EMPTY, ShardIndex, read_index


class TokenRows(NamedTuple):
    """Token provenance of a row range: which token, document and position each row came from."""

    token_ids_R: np.ndarray
    doc_ids_R: np.ndarray
    positions_R: np.ndarray


def storage_to_float32(arr: np.ndarray, acts_dtype: str) -> np.ndarray:
    """Storage-dtype activations (bfloat16 as uint16 bits) to a new float32 array."""
    if acts_dtype == "bfloat16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


def storage_to_torch(arr: np.ndarray, acts_dtype: str) -> torch.Tensor:
    """Zero-copy torch view of storage-dtype activations (bfloat16 reinterpreted from uint16)."""
    if acts_dtype == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


class ActivationStore:
    """A committed, checked view of an activation store. Open with :func:`open_store`."""

    def __init__(self, path: str | Path, *, require_complete: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"activation store not found: {self.path} (run the harvest first)")
        self.attrs: dict = read_group_attrs(self.path)
        self.spec = StoreSpec.from_dict(self.attrs[LAYOUT_ATTR])
        for array in ARRAYS:
            check_array_layout(self.path, self.spec, array)
        self.records: dict[int, ShardRecord] = Manifest(self.path / MANIFEST_NAME).load()
        bad = [s for s in self.records if not 0 <= s < self.spec.n_shards]
        if bad:
            raise StoreError(f"{self.path}: manifest lists shards {bad} outside the store's "
                             f"{self.spec.n_shards} shards")
        self.complete = len(self.records) == self.spec.n_shards
        if require_complete and not self.complete:
            missing = [s for s in range(self.spec.n_shards) if s not in self.records]
            raise StoreError(f"activation store {self.path} is incomplete: {len(self.records)} of "
                             f"{self.spec.n_shards} shards committed (missing {_short_list(missing)}); "
                             f"run the harvest again to finish it")
        self._indices: dict[tuple[int, str], ShardIndex] = {}
        for shard in sorted(self.records):
            for array in ARRAYS:
                self._indices[(shard, array)] = self._check_shard_file(shard, array)
        self._maps: dict[tuple[int, str], np.ndarray] = {}
        self._lock = threading.Lock()

    # ---- shape ----------------------------------------------------------------------------
    @property
    def d_model(self) -> int:
        return self.spec.d_model

    @property
    def n_rows(self) -> int:
        """Rows available to readers (every row of a complete store)."""
        return sum(r.rows for r in self.records.values())

    @property
    def acts_dtype(self) -> str:
        return self.spec.acts_dtype

    @property
    def shards(self) -> list[int]:
        """Committed shard indices, ascending."""
        return sorted(self.records)

    @property
    def nbytes(self) -> int:
        """On-disk bytes of the committed activation rows (payload only)."""
        return self.n_rows * self.d_model * self.spec.storage_dtype.itemsize

    def shard_rows(self, shard: int) -> int:
        return self.records[shard].rows

    def num_batches(self, batch_size: int) -> int:
        """Full batches in one epoch of :meth:`iter_batches`."""
        return self.n_rows // batch_size

    # ---- checks ---------------------------------------------------------------------------
    def _check_shard_file(self, shard: int, array: str) -> ShardIndex:
        path = shard_path(self.path, array, shard)
        rec = self.records[shard].files.get(array)
        if rec is None:
            raise ShardDamagedError(f"{self.path}: manifest entry of shard {shard} lacks '{array}'",
                                    shard=shard, array=array)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            raise ShardDamagedError(f"shard {shard} of '{array}' ({path}) is damaged: file is missing",
                                    shard=shard, array=array) from None
        if size != rec.nbytes:
            raise ShardDamagedError(f"shard {shard} of '{array}' ({path}) is damaged: {size} bytes, "
                                    f"manifest says {rec.nbytes}", shard=shard, array=array)
        return read_index(path, chunks_per_shard=self.spec.chunks_per_shard,
                          chunk_nbytes=self.spec.chunk_nbytes(array),
                          n_present=math.ceil(self.records[shard].rows / self.spec.chunk_rows),
                          shard=shard, array=array)

    # ---- raw shard access -----------------------------------------------------------------
    def shard_array(self, shard: int, array: str = ACTS) -> np.ndarray:
        """One shard's rows in storage dtype: a zero-copy memmap when the shard is dense,
        else a copy assembled chunk by chunk from the index."""
        if shard not in self.records:
            raise StoreError(f"shard {shard} of {self.path} is not committed")
        key = (shard, array)
        cached = self._maps.get(key)
        if cached is not None:
            return cached
        index = self._indices[key]
        rows = self.records[shard].rows
        width = self.spec.row_width(array)
        dtype = self.spec.array_dtype(array)
        n_chunk_rows = math.ceil(rows / self.spec.chunk_rows) * self.spec.chunk_rows
        shape = (n_chunk_rows, width) if array == ACTS else (n_chunk_rows,)
        path = shard_path(self.path, array, shard)
        if index.dense:
            # copy-on-write mapping: zero-copy reads, and writable so torch.from_numpy accepts it
            out = np.memmap(path, dtype=dtype, mode="c", offset=0, shape=shape)[:rows]
        else:
            out = self._read_chunkwise(path, index, shape, dtype, array, shard)[:rows]
        with self._lock:
            self._maps[key] = out
        return out

    def read_into(self, shard: int, lo: int, hi: int, out: np.ndarray, array: str = ACTS) -> None:
        """Copy rows [lo, hi) of one shard (storage dtype) into the C-contiguous ``out``.

        Dense shards are read with one positioned read straight into ``out``: a single kernel copy
        from the page cache, measured 5-7x faster than touching a fresh memory map page by page
        (each 4 KiB page faults). Other shards go through :meth:`shard_array`."""
        if shard not in self.records:
            raise StoreError(f"shard {shard} of {self.path} is not committed")
        row_bytes = self.spec.row_width(array) * self.spec.array_dtype(array).itemsize
        if not 0 <= lo <= hi <= self.records[shard].rows or out.nbytes != (hi - lo) * row_bytes \
                or not out.flags.c_contiguous:
            raise StoreError(f"read_into: bad rows [{lo}, {hi}) or output buffer for shard {shard}")
        if not self._indices[(shard, array)].dense:
            np.copyto(out, self.shard_array(shard, array)[lo:hi].reshape(out.shape))
            return
        view = memoryview(out.reshape(-1).view(np.uint8))
        path = shard_path(self.path, array, shard)
        fd = os.open(path, os.O_RDONLY)
        try:
            done, offset = 0, lo * row_bytes
            while done < len(view):
                n = os.preadv(fd, [view[done:]], offset + done)
                if n == 0:
                    raise ShardDamagedError(f"shard {shard} of '{array}' ({path}) ended early while reading",
                                            shard=shard, array=array)
                done += n
        finally:
            os.close(fd)

    def _read_chunkwise(self, path: Path, index: ShardIndex, shape: tuple, dtype: np.dtype,
                        array: str, shard: int) -> np.ndarray:
        out = np.zeros(shape, dtype=dtype)  # absent chunks are fill value (0)
        flat = out.reshape(-1).view(np.uint8)
        chunk_nbytes = self.spec.chunk_nbytes(array)
        with open(path, "rb") as f:
            for i, (off, nb) in enumerate(zip(index.offsets, index.nbytes)):
                if off == EMPTY or i * chunk_nbytes >= flat.size:
                    continue
                if int(nb) != chunk_nbytes:
                    raise ShardDamagedError(f"shard {shard} of '{array}' ({path}): chunk {i} holds {int(nb)} "
                                            f"bytes, expected {chunk_nbytes} raw bytes", shard=shard, array=array)
                f.seek(int(off))
                f.readinto(memoryview(flat[i * chunk_nbytes:(i + 1) * chunk_nbytes]))
        return out

    def _segments(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(shard, start, stop) pieces of a global row range, local to each shard."""
        if not 0 <= start <= stop <= self.spec.n_rows:
            raise StoreError(f"rows [{start}, {stop}) out of range for a store of {self.spec.n_rows} rows")
        s_rows = self.spec.shard_rows
        for shard in range(start // s_rows, math.ceil(stop / s_rows)):
            lo = max(start, shard * s_rows) - shard * s_rows
            hi = min(stop, (shard + 1) * s_rows) - shard * s_rows
            if lo < hi:
                yield shard, lo, hi

    # ---- public reads ---------------------------------------------------------------------
    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Activation rows [start, stop) as a new float32 array (stop - start, d_model)."""
        raw = np.empty((stop - start, self.d_model), dtype=self.spec.storage_dtype)
        at = 0
        for s, lo, hi in self._segments(start, stop):
            self.read_into(s, lo, hi, raw[at:at + hi - lo])
            at += hi - lo
        return storage_to_float32(raw, self.acts_dtype)

    def read_tokens(self, start: int, stop: int) -> TokenRows:
        """token_ids, doc_ids and positions of rows [start, stop)."""
        out = []
        for array in ("token_ids", "doc_ids", "positions"):
            parts = [self.shard_array(s, array)[lo:hi] for s, lo, hi in self._segments(start, stop)]
            out.append(np.concatenate(parts) if parts else np.zeros(0, np.int32))
        return TokenRows(*out)

    def iter_batches(self, batch_size: int, *, seed: int, epoch: int = 0, start_batch: int = 0,
                     device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     buffer_rows: int | None = None, n_threads: int = 2) -> Iterator[torch.Tensor]:
        """One epoch of (batch_size, d_model) tensors; see :class:`cache_tools.loader.MixingLoader`."""
        return iter(MixingLoader(self, batch_size, seed=seed, epoch=epoch, start_batch=start_batch,
                                 device=device, dtype=dtype, buffer_rows=buffer_rows, n_threads=n_threads))

    def head(self, n_rows: int):
        """Rows [0, n_rows) as a store of their own (:class:`cache_tools.prefix.StorePrefix`)."""
        return StorePrefix(self, n_rows)

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, rows={self.n_rows}, d_model={self.d_model}, "
                f"dtype={self.acts_dtype}, shards={len(self.records)}/{self.spec.n_shards})")


def open_store(path: str | Path, *, require_complete: bool = True) -> ActivationStore:
    """Open an activation store for reading; by default an incomplete store is an error."""
    return ActivationStore(path, require_complete=require_complete)


def _short_list(items: list[int], limit: int = 8) -> str:
    text = ", ".join(map(str, items[:limit]))
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")
