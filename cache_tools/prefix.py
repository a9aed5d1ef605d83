"""The first rows of a store as a store of its own (:meth:`ActivationStore.head`): what a reader of
the view can reach ends at ``n_rows``, so a trainer given the view cannot read the rows after it (the
held-out rows). The view serves :class:`cache_tools.loader.MixingLoader` as the store does: its shard
list ends with the shard holding its last row, that shard cut short."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from cache_tools.errors import StoreError
from cache_tools.loader import MixingLoader

if TYPE_CHECKING:
    from cache_tools.reader import ActivationStore


class StorePrefix:
    """Rows [0, n_rows) of a complete store."""

    def __init__(self, store: "ActivationStore", n_rows: int) -> None:
        if not store.complete:
            raise StoreError(f"{store.path}: a prefix view needs a complete store")
        if not 0 < n_rows <= store.n_rows:
            raise StoreError(f"{store.path}: a prefix of {n_rows} rows of a store of {store.n_rows}")
        self.store, self._n_rows = store, n_rows
        self.spec, self.path, self.attrs = store.spec, store.path, store.attrs

    @property
    def n_rows(self) -> int:
        return self._n_rows

    @property
    def d_model(self) -> int:
        return self.store.d_model

    @property
    def acts_dtype(self) -> str:
        return self.store.acts_dtype

    @property
    def shards(self) -> list[int]:
        return [s for s in self.store.shards if s * self.spec.shard_rows < self._n_rows]

    def shard_rows(self, shard: int) -> int:
        return max(0, min(self.store.shard_rows(shard), self._n_rows - shard * self.spec.shard_rows))

    def num_batches(self, batch_size: int) -> int:
        return self._n_rows // batch_size

    def read_into(self, shard: int, lo: int, hi: int, out: np.ndarray, array: str = "acts") -> None:
        if hi > self.shard_rows(shard):
            raise StoreError(f"read_into: rows [{lo}, {hi}) of shard {shard} lie past this view's {self._n_rows} rows")
        self.store.read_into(shard, lo, hi, out, array)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        if stop > self._n_rows:
            raise StoreError(f"rows [{start}, {stop}) lie past this view's {self._n_rows} rows")
        return self.store.read_rows(start, stop)

    def head(self, n_rows: int) -> "StorePrefix":
        return StorePrefix(self.store, min(n_rows, self._n_rows))

    def iter_batches(self, batch_size: int, *, seed: int, epoch: int = 0, start_batch: int = 0,
                     device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     buffer_rows: int | None = None, n_threads: int = 2) -> Iterator[torch.Tensor]:
        return iter(MixingLoader(self, batch_size, seed=seed, epoch=epoch, start_batch=start_batch,
                                 device=device, dtype=dtype, buffer_rows=buffer_rows, n_threads=n_threads))

    def __repr__(self) -> str:
        return f"StorePrefix({self.store!r}, rows={self._n_rows})"
