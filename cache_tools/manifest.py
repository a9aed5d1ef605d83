"""``manifest.jsonl``: one fsynced JSON line per committed shard. Only shards listed here exist for
readers; a shard file without a manifest line is a leftover of an interrupted write."""
from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cache_tools.errors import StoreError


@dataclass(frozen=True)
class FileRecord:
    """Size and checksum of one array's shard file."""

    nbytes: int
    """File size in bytes."""
    crc32c: int
    """CRC32C of the whole file."""


@dataclass(frozen=True)
class ShardRecord:
    """One committed shard: its rows in every array, with per-file size and checksum."""

    shard: int
    """Shard index (rows ``shard * shard_rows`` onwards)."""
    rows: int
    """Rows held by the shard (shard_rows except possibly for the last shard)."""
    files: dict[str, FileRecord]
    """Per array name ('acts', 'token_ids', ...) the file's size and checksum."""
    time: float
    """Unix time of the commit."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ShardRecord":
        files = {k: FileRecord(int(v["nbytes"]), int(v["crc32c"])) for k, v in data["files"].items()}
        return cls(int(data["shard"]), int(data["rows"]), files, float(data["time"]))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Manifest:
    """Append-only shard log; safe for several processes appending at once (flock + O_APPEND)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[int, ShardRecord]:
        """Committed shards by index. A torn final line (a crash mid-append) is ignored; a bad
        line anywhere else means the manifest itself is damaged."""
        records, bad = self.load_lenient()
        if bad:
            raise StoreError(f"{self.path} line {bad[0]} is damaged; run 'fc-cache repair' on the store")
        return records

    def load_lenient(self) -> tuple[dict[int, ShardRecord], list[int]]:
        """Committed shards and the 1-based numbers of damaged lines (a torn tail is not damage)."""
        if not self.path.exists():
            return {}, []
        lines = self.path.read_text(errors="replace").split("\n")
        records: dict[int, ShardRecord] = {}
        bad: list[int] = []
        for i, line in enumerate(lines[:-1]):  # the text after the last newline is a torn tail
            if not line.strip():
                continue
            try:
                rec = ShardRecord.from_dict(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                bad.append(i + 1)
                continue
            records[rec.shard] = rec
        return records, bad

    def append(self, record: ShardRecord) -> None:
        """Append one line and fsync it: after this returns, the shard is committed."""
        data = (record.to_json() + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                raise StoreError(f"{self.path} ends in a torn line; open the store for writing "
                                 f"(which drops it) before appending")
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock

    def drop_torn_tail(self) -> None:
        """Remove a final line left incomplete by a crash, so later appends start on a new line."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.rewrite(self.load())

    def rewrite(self, records: dict[int, ShardRecord]) -> None:
        """Atomically replace the manifest with ``records`` (temp file, fsync, rename)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            for shard in sorted(records):
                f.write(records[shard].to_json() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)


def now() -> float:
    return time.time()
