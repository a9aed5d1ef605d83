"""Crash-safe shard writer.

Each shard file is written whole to a temporary file, fsynced, renamed into place, and only then
recorded by one fsynced manifest line. A crash at any point loses at most the shard in flight;
``remove_leftovers`` clears what an interrupted writer left behind.
"""
from __future__ import annotations

import math
import os
import shutil
import uuid
from pathlib import Path

import crc32c
import numpy as np
import torch

from cache_tools.errors import StoreError
from cache_tools.layout import (ACTS, ARRAYS, LAYOUT_ATTR, MANIFEST_NAME, TMP_DIR_NAME,
                                StoreSpec, create_zarr_layout, read_group_attrs, shard_path)
from cache_tools.manifest import FileRecord, Manifest, ShardRecord, fsync_dir, now
from cache_tools.shard_format import encode_index

IDENTITY_ATTR = "store_identity"


def acts_to_storage(acts_RD: torch.Tensor | np.ndarray, acts_dtype: str) -> np.ndarray:
    """Activations as the numpy array written to disk (bfloat16 becomes its uint16 bit pattern)."""
    if isinstance(acts_RD, np.ndarray):
        acts_RD = torch.from_numpy(acts_RD)
    acts_RD = acts_RD.detach().cpu()
    if acts_dtype == "bfloat16":
        return acts_RD.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view("<u2")
    return acts_RD.to(getattr(torch, acts_dtype)).contiguous().numpy()


class StoreWriter:
    """Writes whole shards into one store; several processes may write disjoint shards at once."""

    def __init__(self, root: Path, spec: StoreSpec) -> None:
        self.root = Path(root)
        self.spec = spec
        self.manifest = Manifest(self.root / MANIFEST_NAME)
        self.tmp_dir = self.root / TMP_DIR_NAME

    # ---- opening --------------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, root: Path, spec: StoreSpec, attrs: dict, identity: str) -> "StoreWriter":
        """Open the store at ``root`` for writing, creating it if absent.

        ``identity`` fingerprints everything that determines the content; an existing store with
        another identity or shape is refused rather than mixed with new rows.
        """
        root = Path(root)
        if (root / "zarr.json").is_file():
            existing = read_group_attrs(root)
            if existing.get(LAYOUT_ATTR) != spec.to_dict() or existing.get(IDENTITY_ATTR) != identity:
                raise StoreError(
                    f"the store at {root} was written with a different configuration "
                    f"(layout {existing.get(LAYOUT_ATTR)}, identity {existing.get(IDENTITY_ATTR)}); "
                    f"delete it or choose another run directory")
            return cls(root, spec)
        if root.exists() and any(root.iterdir()):
            raise StoreError(f"{root} exists and is not an activation store; refusing to write into it")
        # Build metadata beside the target and rename it in, so a crash never leaves half a layout.
        staging = root.with_name(root.name + ".creating")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        create_zarr_layout(staging, spec, {**attrs, IDENTITY_ATTR: identity})
        if root.exists():
            root.rmdir()
        os.replace(staging, root)
        fsync_dir(root.parent)
        return cls(root, spec)

    # ---- state ----------------------------------------------------------------------------
    def committed(self) -> dict[int, ShardRecord]:
        return self.manifest.load()

    def missing_shards(self) -> list[int]:
        done = self.committed()
        return [s for s in range(self.spec.n_shards) if s not in done]

    def is_complete(self) -> bool:
        return not self.missing_shards()

    def remove_leftovers(self) -> list[Path]:
        """Delete temp files, shard files not in the manifest, and a torn manifest tail.

        Call only while no other writer is active on this store."""
        self.manifest.drop_torn_tail()
        removed: list[Path] = []
        if self.tmp_dir.exists():
            removed += sorted(self.tmp_dir.iterdir())
            shutil.rmtree(self.tmp_dir)
        done = self.committed()
        for shard in range(self.spec.n_shards):
            if shard in done:
                continue
            for array in ARRAYS:
                path = shard_path(self.root, array, shard)
                if path.exists():
                    path.unlink()
                    removed.append(path)
        return removed

    # ---- writing --------------------------------------------------------------------------
    def write_shard(self, shard: int, acts_RD: np.ndarray, token_ids_R: np.ndarray,
                    doc_ids_R: np.ndarray, positions_R: np.ndarray) -> ShardRecord:
        """Write one whole shard of every array, then commit it with a manifest line."""
        start, stop = self.spec.shard_row_range(shard)
        rows = stop - start
        arrays = {ACTS: acts_RD, "token_ids": token_ids_R, "doc_ids": doc_ids_R, "positions": positions_R}
        for name, arr in arrays.items():
            want_shape = (rows, self.spec.d_model) if name == ACTS else (rows,)
            want_dtype = self.spec.array_dtype(name)
            if arr.shape != want_shape or arr.dtype != want_dtype:
                raise StoreError(f"shard {shard} '{name}': got {arr.dtype}{arr.shape}, "
                                 f"expected {want_dtype}{want_shape}")
        if not _all_finite(acts_RD, self.spec.acts_dtype):
            raise StoreError(f"shard {shard}: activations contain NaN or inf; nothing written")
        self.tmp_dir.mkdir(exist_ok=True)
        files = {name: self._write_file(shard, name, arr) for name, arr in arrays.items()}
        record = ShardRecord(shard=shard, rows=rows, files=files, time=now())
        self.manifest.append(record)
        return record

    def _write_file(self, shard: int, array: str, arr: np.ndarray) -> FileRecord:
        spec = self.spec
        rows = arr.shape[0]
        n_present = math.ceil(rows / spec.chunk_rows)
        pad_rows = n_present * spec.chunk_rows - rows
        row_bytes = spec.row_width(array) * spec.array_dtype(array).itemsize
        pieces = [memoryview(np.ascontiguousarray(arr)).cast("B"), bytes(pad_rows * row_bytes),
                  encode_index(n_present, spec.chunks_per_shard, spec.chunk_nbytes(array))]
        tmp = self.tmp_dir / f"{array}-{shard}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        crc, size = 0, 0
        with open(tmp, "wb") as f:
            for piece in pieces:
                f.write(piece)
                crc = crc32c.crc32c(piece, crc)
                size += len(piece)
            f.flush()
            os.fsync(f.fileno())
        final = shard_path(self.root, array, shard)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return FileRecord(nbytes=size, crc32c=crc)


def _all_finite(acts: np.ndarray, acts_dtype: str) -> bool:
    if acts_dtype == "bfloat16":
        return bool(torch.isfinite(torch.from_numpy(acts.view(np.int16)).view(torch.bfloat16)).all())
    return bool(np.isfinite(acts).all())
