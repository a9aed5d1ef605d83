"""The training loader: one epoch covers every row once, order fixed by (seed, epoch), exact resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cache_tools import StoreError, StoreSpec, StoreWriter, acts_to_storage, open_store

N, D, SHARD, CHUNK = 9_000, 8, 2048, 512  # 5 shards, the last one partial


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Row i holds the value i in column 0, so batches tell exactly which rows they contain."""
    root = tmp_path_factory.mktemp("loader") / "store"
    spec = StoreSpec(n_rows=N, d_model=D, shard_rows=SHARD, chunk_rows=CHUNK, acts_dtype="float32")
    writer = StoreWriter.create_or_open(root, spec, {}, "loader-test")
    acts_ND = np.random.default_rng(1).standard_normal((N, D)).astype(np.float32)
    acts_ND[:, 0] = np.arange(N)
    ids = np.arange(N, dtype=np.int32)
    for shard in range(spec.n_shards):
        a, b = spec.shard_row_range(shard)
        writer.write_shard(shard, acts_to_storage(acts_ND[a:b], "float32"), ids[a:b], ids[a:b], ids[a:b])
    return open_store(root)


def row_ids(batches) -> np.ndarray:
    return torch.cat([b[:, 0] for b in batches]).long().numpy()


def test_one_epoch_yields_every_row_at_most_once_in_full_batches(store):
    batches = list(store.iter_batches(128, seed=0, buffer_rows=3000))
    assert len(batches) == store.num_batches(128) == N // 128
    assert all(b.shape == (128, D) and b.dtype == torch.float32 for b in batches)
    ids = row_ids(batches)
    assert len(np.unique(ids)) == len(ids) == (N // 128) * 128
    np.testing.assert_array_equal(batches[0][:, 1:].numpy(), store.read_rows(0, N)[ids[:128], 1:])


def test_order_is_shuffled_and_fixed_by_seed_and_epoch(store):
    a = row_ids(store.iter_batches(100, seed=3, epoch=0, buffer_rows=3000))
    b = row_ids(store.iter_batches(100, seed=3, epoch=0, buffer_rows=3000))
    c = row_ids(store.iter_batches(100, seed=3, epoch=1, buffer_rows=3000))
    d = row_ids(store.iter_batches(100, seed=4, epoch=0, buffer_rows=3000))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    # rows are mixed across shards inside a batch, not read in disk order
    assert len(np.unique(a[:100] // SHARD)) > 1
    assert np.mean(np.diff(a) == 1) < 0.01


@pytest.mark.parametrize("start_batch", [1, 23, 37, 89])
def test_start_batch_resumes_exactly(store, start_batch):
    full = list(store.iter_batches(100, seed=7, buffer_rows=3000))
    resumed = list(store.iter_batches(100, seed=7, start_batch=start_batch, buffer_rows=3000))
    assert len(resumed) == len(full) - start_batch
    for x, y in zip(full[start_batch:], resumed):
        assert torch.equal(x, y)


def test_dtype_and_bad_arguments(store):
    first = next(iter(store.iter_batches(64, seed=0, dtype=torch.bfloat16)))
    assert first.dtype == torch.bfloat16 and first.device.type == "cpu"
    with pytest.raises(StoreError, match="start_batch"):
        store.iter_batches(64, seed=0, start_batch=10_000)
    with pytest.raises(StoreError, match="batch_size"):
        store.iter_batches(0, seed=0)


def test_abandoned_iterator_stops_its_threads(store):
    import threading

    before = threading.active_count()
    it = store.iter_batches(64, seed=0, buffer_rows=2048)
    next(it)
    it.close()
    assert threading.active_count() <= before
