"""The one pass over the cache: encode every row in batches and keep, per selected latent, a running
top-N (values and global row indices) and a log-binned activation histogram. Memory holds two
batches, the (N, M) buffers and the (M, bins) counts, whatever the cache's length."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, NamedTuple

import numpy as np
import torch

from cache_tools import ActivationStore
from cache_tools.reader import storage_to_torch

HIST_EDGES = torch.logspace(-4, 4, 8 * 20 + 1)
"""Histogram bin edges: activations of every scale fit, 20 bins a decade, the same for any order."""


class TopActivations(NamedTuple):
    """Result of the pass, per selected latent (column m is ``latents_M[m]``)."""

    latents_M: torch.Tensor
    top_vals_NM: torch.Tensor
    """Largest activations, descending per column; 0 where the latent fired on fewer than N rows."""
    top_rows_NM: torch.Tensor
    """Global cache row of each value in ``top_vals_NM``."""
    hist_MB: torch.Tensor
    """Firing counts per histogram bin (``HIST_EDGES``); row sums are the firing counts."""
    n_rows: int


def iter_row_batches(store: ActivationStore, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(first global row, float32 (B, d_model)) in cache order; the next batch is read by a
    background thread while this one is encoded."""
    starts = list(range(0, store.n_rows, batch_size))

    def read(start: int) -> np.ndarray:
        stop = min(start + batch_size, store.n_rows)
        raw = np.empty((stop - start, store.d_model), dtype=store.spec.storage_dtype)
        at = 0
        for shard, lo, hi in store._segments(start, stop):
            store.read_into(shard, lo, hi, raw[at:at + hi - lo])
            at += hi - lo
        return raw

    with ThreadPoolExecutor(1, thread_name_prefix="fc-dashboard-read") as pool:
        pending = pool.submit(read, starts[0]) if starts else None
        for i, start in enumerate(starts):
            raw = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(read, starts[i + 1])
            yield start, storage_to_torch(raw, store.acts_dtype).float()


@torch.no_grad()
def scan_top_activations(store: ActivationStore, sae, latents: list[int], n_top: int,
                         batch_size: int) -> TopActivations:
    """One pass over ``store``; no Python loop over rows or latents per batch."""
    latents_M = torch.tensor(latents, dtype=torch.long)
    M, n_bins = len(latents), len(HIST_EDGES) - 1
    top_vals_NM = torch.zeros(n_top, M)
    top_rows_NM = torch.full((n_top, M), -1, dtype=torch.long)
    counts_MB = torch.zeros(M * n_bins, dtype=torch.long)
    col_offset_M = torch.arange(M) * n_bins
    for start, x_BD in iter_row_batches(store, batch_size):
        acts_BM = sae.encode(x_BD).index_select(1, latents_M)
        B = acts_BM.shape[0]
        rows_BM = torch.arange(start, start + B).unsqueeze(1).expand(B, M)
        # running top-N: topk over the buffer stacked on the batch, per column
        cand_vals = torch.cat([top_vals_NM, acts_BM])
        top_vals_NM, idx_NM = cand_vals.topk(n_top, dim=0)
        top_rows_NM = torch.cat([top_rows_NM, rows_BM]).gather(0, idx_NM)
        fired_BM = acts_BM > 0
        bins = torch.bucketize(acts_BM[fired_BM], HIST_EDGES).sub_(1).clamp_(0, n_bins - 1)
        flat = col_offset_M.expand(B, M)[fired_BM] + bins
        counts_MB += torch.bincount(flat, minlength=M * n_bins)
    top_rows_NM = torch.where(top_vals_NM > 0, top_rows_NM, -1)
    return TopActivations(latents_M, top_vals_NM, top_rows_NM, counts_MB.view(M, n_bins), store.n_rows)


@torch.no_grad()
def frequent_latents(store: ActivationStore, sae, n: int, batch_size: int, rows: int) -> list[tuple[int, float]]:
    """The ``n`` latents that fire most often on the first ``rows`` cache rows: (latent, frequency)."""
    fires_S = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    seen = 0
    for _, x_BD in iter_row_batches(store, batch_size):
        fires_S += (sae.encode(x_BD) > 0).sum(0)
        seen += x_BD.shape[0]
        if seen >= rows:
            break
    freq, idx = (fires_S.float() / max(seen, 1)).topk(min(n, fires_S.numel()))
    return list(zip(idx.tolist(), freq.tolist()))


def gather_rows(store: ActivationStore, array: str, rows_R: np.ndarray) -> np.ndarray:
    """Values of ``array`` at arbitrary global rows (any order; one fancy index per shard)."""
    shard_rows = store.spec.shard_rows
    out = None
    shard_R = rows_R // shard_rows
    for shard in np.unique(shard_R):
        sel = shard_R == shard
        values = np.asarray(store.shard_array(int(shard), array)[rows_R[sel] - shard * shard_rows])
        if out is None:
            out = np.empty((len(rows_R),) + values.shape[1:], dtype=values.dtype)
        out[sel] = values
    if out is None:
        width = (store.d_model,) if array == "acts" else ()
        out = np.empty((0,) + width, dtype=store.spec.array_dtype(array))
    return out
