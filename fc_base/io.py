"""Atomic writes: a temporary file beside the target, flushed and fsynced, then renamed over it.
A crash leaves either the old file or the new one, never a torn one."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def write_atomic(path: str | Path, write: Callable[[Path], None], *, fsync: bool = True) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path``. The temporary name carries the
    process id so concurrent writers of one file never share a temporary."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path: str | Path, text: str, *, fsync: bool = True) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text), fsync=fsync)


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 2, **dumps_kwargs) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=indent, **dumps_kwargs) + "\n")


def write_parquet_atomic(path: str | Path, frame) -> Path:
    """A pandas DataFrame as Parquet, without its index."""
    return write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))
