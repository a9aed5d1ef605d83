"""Activation sources the training loop reads: the on-disk store or tensors held in memory.

Both follow one protocol (``n_rows``, ``d_model``, ``read_rows``, ``iter_batches``) so that the
trainer, benchmarks and tests can swap them; the order of batches is a pure function of
(seed, epoch), which is what makes exact resume possible.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
import torch


class ActivationSource(Protocol):
    @property
    def n_rows(self) -> int: ...

    @property
    def d_model(self) -> int: ...

    def read_rows(self, start: int, stop: int) -> np.ndarray: ...

    def iter_batches(self, batch_size: int, *, seed: int, epoch: int = 0, start_batch: int = 0,
                     device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]: ...

    def head(self, n_rows: int) -> "ActivationSource":
        """Rows [0, n_rows) as a source of their own (what training reads beside held-out rows)."""
        ...


class InMemoryActivations:
    """Activations held as one (N, D) tensor; batches follow a seeded permutation per epoch."""

    def __init__(self, acts_ND: torch.Tensor | np.ndarray):
        acts_ND = torch.as_tensor(acts_ND)
        if acts_ND.ndim != 2 or acts_ND.shape[0] == 0:
            raise ValueError(f"activations must be a non-empty (rows, d_model) array, got shape {tuple(acts_ND.shape)}")
        self.acts_ND = acts_ND

    @property
    def n_rows(self) -> int:
        return int(self.acts_ND.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.acts_ND.shape[1])

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return self.acts_ND[start:stop].to(torch.float32).numpy()

    def head(self, n_rows: int) -> "InMemoryActivations":
        return InMemoryActivations(self.acts_ND[:n_rows])

    def iter_batches(self, batch_size: int, *, seed: int, epoch: int = 0, start_batch: int = 0,
                     device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order_N = torch.randperm(self.n_rows, generator=gen)
        for b in range(start_batch, self.n_rows // batch_size):
            rows = order_N[b * batch_size:(b + 1) * batch_size]
            yield self.acts_ND[rows].to(device=device, dtype=dtype)


def first_rows(source: ActivationSource, n_rows: int) -> torch.Tensor:
    """The first rows of the source as float32, checked for inf/NaN."""
    rows_ND = torch.from_numpy(np.asarray(source.read_rows(0, min(n_rows, source.n_rows)), dtype=np.float32))
    if not torch.isfinite(rows_ND).all():
        raise ValueError("activation cache holds inf/NaN values in its first rows; cannot normalise")
    return rows_ND


def norm_scale_of(rows_ND: torch.Tensor) -> float:
    """The factor s with E||s x||^2 = d_model over these rows."""
    mean_sq = float(rows_ND.pow(2).sum(dim=1).mean())
    if mean_sq <= 0:
        raise ValueError("activation cache rows are all zero; cannot normalise")
    return (rows_ND.shape[1] / mean_sq) ** 0.5
