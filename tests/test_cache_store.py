"""Activation store on synthetic rows: layout, zarr interoperability, checks, repair, recovery."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from cache_tools import ShardDamagedError, StoreError, StoreSpec, StoreWriter, acts_to_storage, open_store
from cache_tools.cli import main as fc_cache
from cache_tools.layout import ACTS, ARRAYS, MANIFEST_NAME, TMP_DIR_NAME, shard_path
from cache_tools.manifest import Manifest
from cache_tools.shard_format import EMPTY, read_index
from cache_tools.verify import verify_store

N, D, SHARD, CHUNK = 10_000, 16, 4096, 1024  # 3 shards, the last one partial
ZERO_ROWS = slice(5000, 6200)  # covers the whole inner chunk 5120..6143 of shard 1


def synthetic_rows(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    acts_ND = rng.standard_normal((N, D)).astype(np.float32) * 3
    acts_ND[ZERO_ROWS] = 0.0
    ids_N = np.arange(N, dtype=np.int32)
    return acts_ND, ids_N


def write_store(root: Path, acts_dtype: str, order=(2, 0, 1)) -> tuple[np.ndarray, np.ndarray]:
    acts_ND, ids_N = synthetic_rows()
    spec = StoreSpec(n_rows=N, d_model=D, shard_rows=SHARD, chunk_rows=CHUNK, acts_dtype=acts_dtype)
    writer = StoreWriter.create_or_open(root, spec, {"model": {"name": "synthetic"}}, "synthetic-v1")
    for shard in order:
        a, b = spec.shard_row_range(shard)
        writer.write_shard(shard, acts_to_storage(acts_ND[a:b], acts_dtype), ids_N[a:b], ids_N[a:b] // 7,
                           ids_N[a:b] % 7)
    return acts_ND, ids_N


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("stores")
    out = {}
    for dtype in ("bfloat16", "float16", "float32"):
        write_store(base / dtype, dtype)
        out[dtype] = base / dtype
    return out


@pytest.fixture
def store_copy(stores, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(stores["float16"], dst)
    return dst


def expected_float32(acts_ND: np.ndarray, dtype: str) -> np.ndarray:
    return torch.from_numpy(acts_ND).to(getattr(torch, dtype)).float().numpy()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_round_trip_every_dtype(stores, dtype):
    acts_ND, ids_N = synthetic_rows()
    store = open_store(stores[dtype])
    assert (store.n_rows, store.d_model, store.acts_dtype) == (N, D, dtype)
    assert store.attrs["model"] == {"name": "synthetic"}
    got = store.read_rows(0, N)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected_float32(acts_ND, dtype))
    np.testing.assert_array_equal(store.read_rows(4000, 4200), got[4000:4200])  # spans a shard edge
    tokens = store.read_tokens(4090, 8200)
    np.testing.assert_array_equal(tokens.token_ids_R, ids_N[4090:8200])
    np.testing.assert_array_equal(tokens.doc_ids_R, ids_N[4090:8200] // 7)
    np.testing.assert_array_equal(tokens.positions_R, ids_N[4090:8200] % 7)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_plain_zarr_reads_every_shard_equal_to_the_reader(stores, dtype):
    store = open_store(stores[dtype])
    for array in ARRAYS:
        z = zarr.open_array(str(stores[dtype] / array), mode="r")
        for shard in store.shards:
            a, b = store.spec.shard_row_range(shard)
            np.testing.assert_array_equal(z[a:b], store.shard_array(shard, array))
    z = zarr.open_array(str(stores[dtype] / ACTS), mode="r")
    assert z.attrs["logical_dtype"] == dtype


def test_all_zero_block_survives_and_is_stored(stores):
    store = open_store(stores["float32"])
    np.testing.assert_array_equal(store.read_rows(ZERO_ROWS.start, ZERO_ROWS.stop), 0.0)
    assert store.read_rows(ZERO_ROWS.stop, ZERO_ROWS.stop + 1).any()
    # the all-zero inner chunk is physically written, not dropped as "empty"
    index = read_index(shard_path(stores["float32"], ACTS, 1), chunks_per_shard=SHARD // CHUNK,
                       chunk_nbytes=CHUNK * D * 4, n_present=4, shard=1, array=ACTS)
    assert index.dense and not (index.offsets == EMPTY).any()
    z = zarr.open_array(str(stores["float32"] / ACTS), mode="r")
    assert not z[ZERO_ROWS].any()


def test_dense_shards_are_memory_mapped(stores):
    store = open_store(stores["bfloat16"])
    assert all(isinstance(store.shard_array(s), np.memmap) for s in store.shards)


def test_out_of_order_chunks_are_read_through_the_fallback(store_copy):
    """A valid shard whose chunks are not in order (as another writer may produce) still reads right."""
    before = open_store(store_copy).read_rows(0, N)
    path = shard_path(store_copy, ACTS, 0)
    raw = path.read_bytes()
    chunk_nbytes = CHUNK * D * 2
    chunks = [raw[i * chunk_nbytes:(i + 1) * chunk_nbytes] for i in range(SHARD // CHUNK)]
    order = [3, 1, 0, 2]  # physical order of the logical chunks
    pairs = np.zeros((4, 2), "<u8")
    for pos, logical in enumerate(order):
        pairs[logical] = (pos * chunk_nbytes, chunk_nbytes)
    import crc32c

    index = pairs.tobytes() + crc32c.crc32c(pairs.tobytes()).to_bytes(4, "little")
    path.write_bytes(b"".join(chunks[i] for i in order) + index)
    manifest = Manifest(store_copy / MANIFEST_NAME)
    records = manifest.load()
    rec = records[0]
    data = path.read_bytes()
    files = dict(rec.files)
    files[ACTS] = type(files[ACTS])(len(data), crc32c.crc32c(data))
    records[0] = type(rec)(rec.shard, rec.rows, files, rec.time)
    manifest.rewrite(records)
    store = open_store(store_copy)
    assert not isinstance(store.shard_array(0), np.memmap)
    np.testing.assert_array_equal(store.read_rows(0, N), before)
    np.testing.assert_array_equal(zarr.open_array(str(store_copy / ACTS), mode="r")[:SHARD],
                                  store.shard_array(0))
    assert verify_store(store_copy).ok


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_names_a_flipped_byte_and_a_truncated_shard(store_copy, capsys):
    assert fc_cache(["verify", str(store_copy)]) == 0
    flip_byte(shard_path(store_copy, ACTS, 1), 12345)  # data region: only the checksum sees it
    truncated = shard_path(store_copy, "token_ids", 2)
    truncated.write_bytes(truncated.read_bytes()[:-10])
    capsys.readouterr()
    assert fc_cache(["verify", str(store_copy)]) == 1
    err = capsys.readouterr().err
    assert "DAMAGED shard 1 (acts)" in err and "CRC32C" in err
    assert "DAMAGED shard 2 (token_ids)" in err and "truncated" in err
    assert "shard 0" not in err
    with pytest.raises(ShardDamagedError, match="shard 2 of 'token_ids'"):
        open_store(store_copy)  # the reader never trusts a shard of the wrong size


def test_flipped_index_byte_fails_the_index_crc(store_copy):
    path = shard_path(store_copy, ACTS, 0)
    flip_byte(path, path.stat().st_size - 20)
    with pytest.raises(ShardDamagedError, match="index CRC32C mismatch"):
        open_store(store_copy)
    report = verify_store(store_copy, checksum=False)
    assert report.damaged_shards == [0]


def test_repair_drops_damaged_shards_and_a_rewrite_restores_them(store_copy, capsys):
    flip_byte(shard_path(store_copy, ACTS, 1), 100)
    assert fc_cache(["repair", str(store_copy)]) == 0
    assert "[1]" in capsys.readouterr().out
    assert sorted(Manifest(store_copy / MANIFEST_NAME).load()) == [0, 2]
    assert not shard_path(store_copy, ACTS, 1).exists()
    with pytest.raises(StoreError, match="incomplete"):
        open_store(store_copy)
    assert fc_cache(["verify", str(store_copy)]) == 1  # undamaged but incomplete
    acts_ND, ids_N = synthetic_rows()
    spec = open_store(store_copy, require_complete=False).spec
    writer = StoreWriter.create_or_open(store_copy, spec, {}, "synthetic-v1")
    assert writer.missing_shards() == [1]
    a, b = spec.shard_row_range(1)
    writer.write_shard(1, acts_to_storage(acts_ND[a:b], "float16"), ids_N[a:b], ids_N[a:b] // 7, ids_N[a:b] % 7)
    assert fc_cache(["verify", str(store_copy)]) == 0
    np.testing.assert_array_equal(open_store(store_copy).read_rows(0, N), expected_float32(acts_ND, "float16"))


def test_leftovers_of_a_crash_are_ignored_then_removed(store_copy):
    """What a writer killed mid-shard leaves: a temp file, an uncommitted shard, a torn manifest line."""
    manifest = Manifest(store_copy / MANIFEST_NAME)
    records = manifest.load()
    orphan = dict(records)
    del orphan[2]
    manifest.rewrite(orphan)  # shard 2's files exist on disk but were never committed
    (store_copy / TMP_DIR_NAME).mkdir(exist_ok=True)
    (store_copy / TMP_DIR_NAME / "acts-2-999-deadbeef").write_bytes(b"half a shard")
    with open(store_copy / MANIFEST_NAME, "a") as f:
        f.write(records[2].to_json()[:40])  # torn append
    store = open_store(store_copy, require_complete=False)
    assert store.shards == [0, 1] and store.n_rows == 2 * SHARD
    report = verify_store(store_copy)
    assert report.ok and report.missing == [2] and len(report.leftovers) == 5
    writer = StoreWriter.create_or_open(store_copy, store.spec, {}, "synthetic-v1")
    removed = writer.remove_leftovers()
    assert len(removed) == 5 and not shard_path(store_copy, ACTS, 2).exists()
    assert (store_copy / MANIFEST_NAME).read_text().endswith("\n")
    assert writer.missing_shards() == [2]


def test_damaged_manifest_line_is_reported_and_repaired(store_copy, capsys):
    lines = (store_copy / MANIFEST_NAME).read_text().splitlines()
    lines[1] = "{not json"
    (store_copy / MANIFEST_NAME).write_text("\n".join(lines) + "\n")
    with pytest.raises(StoreError, match="line 2 is damaged"):
        open_store(store_copy)
    assert fc_cache(["verify", str(store_copy)]) == 1
    assert "DAMAGED manifest line 2" in capsys.readouterr().err
    fc_cache(["repair", str(store_copy)])
    assert len(Manifest(store_copy / MANIFEST_NAME).load()) == 2


def test_writer_refuses_a_store_of_another_configuration(stores, tmp_path):
    spec = open_store(stores["float32"]).spec
    with pytest.raises(StoreError, match="different configuration"):
        StoreWriter.create_or_open(stores["float32"], spec, {}, "another-config")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an activation store"):
        StoreWriter.create_or_open(tmp_path / "junk", spec, {}, "x")


def test_non_finite_rows_are_refused_and_nothing_is_written(tmp_path):
    spec = StoreSpec(n_rows=2048, d_model=4, shard_rows=1024, chunk_rows=512, acts_dtype="bfloat16")
    writer = StoreWriter.create_or_open(tmp_path / "s", spec, {}, "x")
    acts = np.ones((1024, 4), np.float32)
    acts[7, 2] = np.inf
    ids = np.zeros(1024, np.int32)
    with pytest.raises(StoreError, match="NaN or inf"):
        writer.write_shard(0, acts_to_storage(acts, "bfloat16"), ids, ids, ids)
    assert writer.committed() == {} and not shard_path(tmp_path / "s", ACTS, 0).exists()
    with pytest.raises(StoreError, match="expected"):
        writer.write_shard(0, acts_to_storage(acts[:10], "bfloat16"), ids, ids, ids)


def test_missing_store_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(StoreError, match="not found"):
        open_store(tmp_path / "nope")
    assert fc_cache(["inspect", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fc-cache: error:")


def test_inspect_prints_shape_provenance_and_stats(stores, capsys):
    assert fc_cache(["inspect", str(stores["bfloat16"])]) == 0
    out = capsys.readouterr().out
    assert "10000 x 16 bfloat16" in out and "3/3 committed" in out and "largest |x| dims" in out
    assert fc_cache(["inspect", "--json", str(stores["bfloat16"])]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [N, D] and len(info["stats"]["std"]) == D and info["stats"]["nonfinite"] == 0
