"""Whole-store checks behind ``fc-cache verify`` and ``fc-cache repair``."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

from cache_tools.errors import ShardDamagedError
from cache_tools.layout import ARRAYS, MANIFEST_NAME, TMP_DIR_NAME, read_spec, shard_path
from cache_tools.manifest import Manifest, ShardRecord
from cache_tools.shard_format import file_crc32c, read_index


class ShardProblem(NamedTuple):
    """One damaged file of a committed shard."""

    shard: int
    array: str
    reason: str


class VerifyReport(NamedTuple):
    """Outcome of checking every committed shard of a store."""

    n_shards: int
    """Shards of the complete store."""
    committed: list[int]
    """Shards listed in the manifest."""
    problems: list[ShardProblem]
    """Damaged files, one entry each."""
    leftovers: list[Path]
    """Files of interrupted writes (not in the manifest); harmless, removed on the next harvest."""
    bad_manifest_lines: list[int]
    """1-based numbers of manifest lines that do not parse."""

    @property
    def damaged_shards(self) -> list[int]:
        return sorted({p.shard for p in self.problems})

    @property
    def missing(self) -> list[int]:
        done = set(self.committed)
        return [s for s in range(self.n_shards) if s not in done]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.bad_manifest_lines


def check_shard(root: Path, record: ShardRecord, array: str, *, checksum: bool = True) -> str | None:
    """The reason one shard file is damaged, or None if it passes every check."""
    spec = read_spec(root)
    path = shard_path(root, array, record.shard)
    want = record.files.get(array)
    if want is None:
        return "manifest entry lacks this array"
    if not path.is_file():
        return "file is missing"
    size = os.path.getsize(path)
    if size != want.nbytes:
        return f"size {size} bytes, manifest says {want.nbytes} (truncated or extended)"
    try:
        read_index(path, chunks_per_shard=spec.chunks_per_shard, chunk_nbytes=spec.chunk_nbytes(array),
                   n_present=math.ceil(record.rows / spec.chunk_rows), shard=record.shard, array=array)
    except ShardDamagedError as e:
        return str(e).split(" is damaged: ", 1)[-1]
    if checksum and file_crc32c(path) != want.crc32c:
        return "CRC32C of the file differs from the manifest (data changed after commit)"
    return None


def _leftovers(root: Path, committed: set[int], n_shards: int) -> list[Path]:
    found = sorted((root / TMP_DIR_NAME).iterdir()) if (root / TMP_DIR_NAME).is_dir() else []
    for shard in range(n_shards):
        if shard not in committed:
            found += [p for p in (shard_path(root, a, shard) for a in ARRAYS) if p.exists()]
    return found


def verify_store(root: str | Path, *, checksum: bool = True) -> VerifyReport:
    """Check every committed shard's size, index CRC, layout and (``checksum``) whole-file CRC32C."""
    root = Path(root)
    spec = read_spec(root)
    records, bad_lines = Manifest(root / MANIFEST_NAME).load_lenient()
    problems = [ShardProblem(shard, array, reason)
                for shard in sorted(records) for array in ARRAYS
                if (reason := check_shard(root, records[shard], array, checksum=checksum)) is not None]
    return VerifyReport(spec.n_shards, sorted(records), problems, _leftovers(root, set(records), spec.n_shards),
                        bad_lines)


class RepairReport(NamedTuple):
    """What ``repair_store`` dropped."""

    dropped: list[int]
    """Shards removed from the manifest (the next harvest re-creates them)."""
    removed_files: list[Path]
    """Damaged shard files deleted."""


def repair_store(root: str | Path) -> RepairReport:
    """Drop damaged shards from the manifest (atomically) and delete their files."""
    root = Path(root)
    report = verify_store(root)
    if report.ok:
        return RepairReport([], [])
    manifest = Manifest(root / MANIFEST_NAME)
    records = manifest.load_lenient()[0]
    dropped = report.damaged_shards
    manifest.rewrite({s: r for s, r in records.items() if s not in dropped})
    removed = []
    for shard in dropped:  # only after the manifest no longer lists them
        for array in ARRAYS:
            path = shard_path(root, array, shard)
            if path.exists():
                path.unlink()
                removed.append(path)
    return RepairReport(dropped, removed)
