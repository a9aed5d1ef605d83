"""Store layout: one Zarr v3 group holding ``acts`` (N, d_model) and int32 companions
``token_ids``, ``doc_ids``, ``positions`` (N,), all sharded identically and uncompressed.

bfloat16 has no Zarr dtype, so bfloat16 activations are stored as ``uint16`` bit patterns and the
logical dtype lives in the group attributes.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cache_tools.errors import StoreError

FORMAT_VERSION = 1
ACTS = "acts"
TOKEN_ARRAYS = ("token_ids", "doc_ids", "positions")
ARRAYS = (ACTS, *TOKEN_ARRAYS)
MANIFEST_NAME = "manifest.jsonl"
TMP_DIR_NAME = ".partial"
LAYOUT_ATTR = "fc_sae_store"

# logical dtype -> (numpy storage dtype, torch dtype)
ACT_DTYPES: dict[str, tuple[np.dtype, torch.dtype]] = {
    "bfloat16": (np.dtype("<u2"), torch.bfloat16),
    "float16": (np.dtype("<f2"), torch.float16),
    "float32": (np.dtype("<f4"), torch.float32),
}
TOKEN_DTYPE = np.dtype("<i4")


@dataclass(frozen=True)
class StoreSpec:
    """Shape and sharding of a store; saved in the group attributes under ``fc_sae_store``."""

    n_rows: int
    """Total activation rows N when the store is complete."""
    d_model: int
    """Width of each activation row."""
    shard_rows: int
    """Rows per shard file (the unit of atomic writes and recovery)."""
    chunk_rows: int
    """Rows per inner chunk inside a shard; divides shard_rows."""
    acts_dtype: str = "bfloat16"
    """Logical dtype of ``acts``: bfloat16, float16 or float32."""
    format_version: int = FORMAT_VERSION
    """Version of this on-disk layout."""

    def __post_init__(self) -> None:
        if self.n_rows <= 0 or self.d_model <= 0:
            raise StoreError(f"store shape must be positive, got ({self.n_rows}, {self.d_model})")
        if self.chunk_rows <= 0 or self.shard_rows % self.chunk_rows:
            raise StoreError(f"chunk_rows {self.chunk_rows} must divide shard_rows {self.shard_rows}")
        if self.acts_dtype not in ACT_DTYPES:
            raise StoreError(f"acts dtype must be one of {sorted(ACT_DTYPES)}, got {self.acts_dtype!r}")
        if self.format_version != FORMAT_VERSION:
            raise StoreError(f"store format version {self.format_version} is not supported "
                             f"(this version reads {FORMAT_VERSION})")

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_rows / self.shard_rows)

    @property
    def chunks_per_shard(self) -> int:
        return self.shard_rows // self.chunk_rows

    @property
    def storage_dtype(self) -> np.dtype:
        return ACT_DTYPES[self.acts_dtype][0]

    @property
    def torch_dtype(self) -> torch.dtype:
        return ACT_DTYPES[self.acts_dtype][1]

    def shard_row_range(self, shard: int) -> tuple[int, int]:
        if not 0 <= shard < self.n_shards:
            raise StoreError(f"shard {shard} out of range (store has {self.n_shards} shards)")
        start = shard * self.shard_rows
        return start, min(start + self.shard_rows, self.n_rows)

    def array_dtype(self, array: str) -> np.dtype:
        return self.storage_dtype if array == ACTS else TOKEN_DTYPE

    def row_width(self, array: str) -> int:
        return self.d_model if array == ACTS else 1

    def chunk_nbytes(self, array: str) -> int:
        return self.chunk_rows * self.row_width(array) * self.array_dtype(array).itemsize

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StoreSpec":
        return cls(**data)


def shard_path(root: Path, array: str, shard: int) -> Path:
    """Path of a shard file under Zarr's default chunk-key encoding with '/' separators."""
    if array == ACTS:
        return root / array / "c" / str(shard) / "0"
    return root / array / "c" / str(shard)


def create_zarr_layout(root: Path, spec: StoreSpec, attrs: dict) -> None:
    """Write the group and array metadata (no data) with zarr itself, so the layout is exactly what
    zarr expects: sharded, raw little-endian inner chunks, CRC32C-protected index at the end."""
    import zarr

    group = zarr.create_group(store=str(root), zarr_format=3, attributes={**attrs, LAYOUT_ATTR: spec.to_dict()})
    for array in ARRAYS:
        two_d = array == ACTS
        group.create_array(
            array,
            shape=(spec.n_rows, spec.d_model) if two_d else (spec.n_rows,),
            dtype=spec.array_dtype(array),
            shards=(spec.shard_rows, spec.d_model) if two_d else (spec.shard_rows,),
            chunks=(spec.chunk_rows, spec.d_model) if two_d else (spec.chunk_rows,),
            compressors=None,
            filters=None,
            fill_value=0,
            chunk_key_encoding={"name": "default", "separator": "/"},
            attributes={"logical_dtype": spec.acts_dtype} if two_d else {},
            # all-zero chunks must be written, not dropped (they would read back as fill value)
            config={"write_empty_chunks": True},
        )


_EXPECTED_INNER = [{"name": "bytes", "configuration": {"endian": "little"}}]
_EXPECTED_INDEX = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]


def check_array_layout(root: Path, spec: StoreSpec, array: str) -> None:
    """Refuse to read an array whose zarr.json differs from the layout this reader understands."""
    meta_path = root / array / "zarr.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StoreError(f"cannot read {meta_path}: {e}") from None
    two_d = array == ACTS
    want_shape = [spec.n_rows, spec.d_model] if two_d else [spec.n_rows]
    problems = []
    if meta.get("shape") != want_shape:
        problems.append(f"shape {meta.get('shape')} != {want_shape}")
    codecs = meta.get("codecs", [])
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        problems.append("not a single sharding_indexed codec")
    else:
        conf = codecs[0]["configuration"]
        if conf.get("codecs") != _EXPECTED_INNER or conf.get("index_codecs") != _EXPECTED_INDEX \
                or conf.get("index_location", "end") != "end":
            problems.append("inner codecs are not raw little-endian bytes with a CRC32C index at the end")
        want_chunk = [spec.chunk_rows, spec.d_model] if two_d else [spec.chunk_rows]
        if conf.get("chunk_shape") != want_chunk:
            problems.append(f"inner chunk shape {conf.get('chunk_shape')} != {want_chunk}")
    grid = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
    if grid != ([spec.shard_rows, spec.d_model] if two_d else [spec.shard_rows]):
        problems.append(f"shard shape {grid} does not match shard_rows {spec.shard_rows}")
    if problems:
        raise StoreError(f"{meta_path}: unsupported layout: {'; '.join(problems)}")


def read_group_attrs(root: Path) -> dict:
    meta_path = root / "zarr.json"
    if not meta_path.is_file():
        raise StoreError(f"{root} is not an activation store (no zarr.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{meta_path} is not valid JSON: {e}") from None
    attrs = meta.get("attributes", {})
    if LAYOUT_ATTR not in attrs:
        raise StoreError(f"{root} is a Zarr group but not an fc-sae activation store")
    return attrs


def read_spec(root: Path) -> StoreSpec:
    return StoreSpec.from_dict(read_group_attrs(root)[LAYOUT_ATTR])
