"""Training-order loader: shuffled shard order, a large mixing buffer filled by background threads
with big contiguous reads, batches drawn by random permutation of the buffer.

The epoch is a fixed stream: shards in a seeded order are grouped into buffer-sized groups, and each
group's rows are permuted with a generator seeded by (seed, epoch, group). Batches are consecutive
``batch_size`` slices of that stream (a batch may span two groups), so the order depends only on
(seed, epoch) and ``start_batch`` can jump straight to any batch without replaying earlier ones.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from cache_tools.errors import StoreError

if TYPE_CHECKING:
    from cache_tools.reader import ActivationStore

COPY_ROWS = 16384  # rows per background copy task: big sequential reads, several tasks in flight
DEFAULT_BUFFER_SHARDS = 4


def _as_storage_numpy(t: torch.Tensor) -> np.ndarray:
    """Writable numpy view of a contiguous CPU tensor in storage layout (bfloat16 as uint16)."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


class MixingLoader:
    """Iterable over one epoch of (batch_size, d_model) tensors of ``dtype`` on ``device``."""

    def __init__(self, store: "ActivationStore", batch_size: int, *, seed: int, epoch: int = 0,
                 start_batch: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, buffer_rows: int | None = None,
                 n_threads: int = 2) -> None:
        if batch_size <= 0:
            raise StoreError(f"batch_size must be > 0, got {batch_size}")
        self.n_batches = store.num_batches(batch_size)
        if not 0 <= start_batch <= self.n_batches:
            raise StoreError(f"start_batch {start_batch} outside an epoch of {self.n_batches} batches")
        if n_threads < 1:
            raise StoreError(f"n_threads must be >= 1, got {n_threads}")
        self.store = store
        self.batch_size = batch_size
        self.seed, self.epoch, self.start_batch = seed, epoch, start_batch
        self.device = torch.device(device)
        self.dtype = dtype
        self.n_threads = n_threads
        self.buffer_rows = buffer_rows or DEFAULT_BUFFER_SHARDS * store.spec.shard_rows
        self.groups = self._plan_groups()

    def _plan_groups(self) -> list[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(np.array(self.store.shards))
        groups: list[list[int]] = [[]]
        rows = 0
        for shard in order.tolist():
            if rows >= self.buffer_rows:
                groups.append([])
                rows = 0
            groups[-1].append(shard)
            rows += self.store.shard_rows(shard)
        return [g for g in groups if g]

    def __len__(self) -> int:
        return self.n_batches - self.start_batch

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self._generate()

    # ---- background filling -------------------------------------------------------------
    def _fill(self, pool: ThreadPoolExecutor, buffer: torch.Tensor, group: list[int]) -> list[Future]:
        futures, at = [], 0
        for shard in group:
            rows = self.store.shard_rows(shard)
            for lo in range(0, rows, COPY_ROWS):
                hi = min(lo + COPY_ROWS, rows)
                futures.append(pool.submit(self._copy, buffer, at + lo, shard, lo, hi))
            at += rows
        return futures

    def _copy(self, buffer: torch.Tensor, at: int, shard: int, lo: int, hi: int) -> None:
        dst = buffer[at:at + hi - lo]
        if dst.device.type == "cpu":  # read straight into the mixing buffer
            self.store.read_into(shard, lo, hi, _as_storage_numpy(dst))
        else:  # stage through host memory, then one transfer
            host = torch.empty(dst.shape, dtype=dst.dtype, pin_memory=torch.cuda.is_available())
            self.store.read_into(shard, lo, hi, _as_storage_numpy(host))
            dst.copy_(host)

    def _group_rows(self, group: list[int]) -> int:
        return sum(self.store.shard_rows(s) for s in group)

    def _permutation(self, g: int, n: int) -> torch.Tensor:
        perm = np.random.default_rng([self.seed, self.epoch, g]).permutation(n)
        return torch.from_numpy(perm).to(self.device)

    # ---- the epoch stream ---------------------------------------------------------------
    def _generate(self) -> Iterator[torch.Tensor]:
        B = self.batch_size
        sizes = [self._group_rows(g) for g in self.groups]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        begin = self.start_batch * B
        first = int(np.searchsorted(starts, begin, side="right") - 1)
        to_yield = self.n_batches - self.start_batch
        if to_yield <= 0:
            return
        capacity = max(sizes)
        storage = self.store.spec.torch_dtype
        buffers = [torch.empty((capacity, self.store.d_model), dtype=storage, device=self.device)
                   for _ in range(2 if len(self.groups) - first > 1 else 1)]
        pool = ThreadPoolExecutor(self.n_threads, thread_name_prefix="fc-cache-fill")
        try:
            pending = self._fill(pool, buffers[0], self.groups[first])
            carry: torch.Tensor | None = None
            pos = begin - int(starts[first])
            for g in range(first, len(self.groups)):
                for fut in pending:
                    fut.result()
                buf = buffers[(g - first) % len(buffers)][:sizes[g]]
                if g + 1 < len(self.groups):  # prefetch the next group while this one is consumed
                    pending = self._fill(pool, buffers[(g + 1 - first) % len(buffers)], self.groups[g + 1])
                perm = self._permutation(g, sizes[g])
                while pos < sizes[g]:
                    need = B - (0 if carry is None else carry.shape[0])
                    rows = buf.index_select(0, perm[pos:pos + need])
                    pos += rows.shape[0]
                    if carry is not None:
                        rows = torch.cat([carry, rows])
                        carry = None
                    if rows.shape[0] < B:
                        carry = rows  # the batch continues in the next group
                        break
                    yield rows.to(self.dtype)
                    to_yield -= 1
                    if to_yield == 0:
                        return
                pos = 0
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
