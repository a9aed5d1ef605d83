"""Shared data for the trainer tests: sparse-feature activations and a real on-disk store."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cache_tools import StoreSpec, StoreWriter, acts_to_storage


def synthetic_acts(n: int, d: int, seed: int = 0, n_features: int = 128, active: int = 4,
                   scale: float = 40.0) -> np.ndarray:
    """Rows are sums of a few of n_features random unit directions, at a non-unit scale so the
    normalisation factor matters."""
    rng = np.random.default_rng(seed)
    feats_FD = rng.standard_normal((n_features, d)).astype(np.float32)
    feats_FD /= np.linalg.norm(feats_FD, axis=1, keepdims=True)
    idx_NA = rng.integers(0, n_features, size=(n, active))
    coef_NA = rng.uniform(0.5, 2.0, size=(n, active)).astype(np.float32)
    acts_ND = np.einsum("na,nad->nd", coef_NA, feats_FD[idx_NA])
    acts_ND += 0.05 * rng.standard_normal((n, d)).astype(np.float32)
    return (scale * acts_ND + 3.0).astype(np.float32)


def write_store(root: Path, acts_ND: np.ndarray, shard_rows: int = 4096, chunk_rows: int = 1024) -> Path:
    n, d = acts_ND.shape
    spec = StoreSpec(n_rows=n, d_model=d, shard_rows=shard_rows, chunk_rows=chunk_rows, acts_dtype="float32")
    writer = StoreWriter.create_or_open(root, spec, {"model": "synthetic"}, "trainer-tests")
    ids = np.arange(n, dtype=np.int32)
    for shard in range(spec.n_shards):
        a, b = spec.shard_row_range(shard)
        writer.write_shard(shard, acts_to_storage(acts_ND[a:b], "float32"), ids[a:b], ids[a:b], ids[a:b])
    return root
