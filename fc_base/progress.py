"""Progress records: every running stage (the harvest, one SAE's training, the eval tasks, the
report, a long step inside an eval) keeps one small JSON file, ``run_dir/progress/<key>.json``, up to
date, so that a process other than the one doing the work can draw its bar and ETA
(``python -m pipeline.progress watch``; the stages run inside a background Prefect runner).

Writes are atomic (temp file + rename) and at most one per ``MIN_INTERVAL_S`` per record; an update
that falls inside the interval is written when it ends, so a record never lags for long. Without a
run directory (none given and no :func:`run_scope` active) nothing is written: library code may
report progress unconditionally. ``bar=True`` also draws a tqdm bar on stderr (the command line).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PROGRESS_DIR = "progress"
MIN_INTERVAL_S = 0.25
"""Least time between two writes of one record (a finished record is written at once)."""
RUNNING, DONE, FAILED, ON_DISK = "running", "done", "failed", "on disk"
FINISHED = (DONE, FAILED, ON_DISK)
_KEY = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class ProgressRecord:
    """One stage's progress as written to ``progress/<key>.json``."""

    key: str
    """``harvest``, ``train.<sae>``, ``eval``, ``eval.<step>`` (a step inside the evals), ``report``;
    the part before the first dot is the stage."""
    label: str
    """What the terminal line is called."""
    unit: str
    total: int | None
    """Units of the whole stage; None when unknown (elapsed time only, no ETA)."""
    done: int
    initial: int
    """``done`` when this run of the stage started: a resumed stage's rate counts only new work."""
    started_at: float
    """Epoch seconds."""
    updated_at: float
    finished_at: float | None
    status: str
    """running, done, failed or ``on disk`` (complete before the stage started)."""
    note: str = ""
    """What it is doing now (the current eval task, the training loss)."""
    unit_scale: bool = False
    """Show counts as 16.4k rather than 16384."""

    @property
    def stage(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def wall_s(self) -> float:
        return (self.finished_at if self.finished_at is not None else self.updated_at) - self.started_at

    @classmethod
    def from_dict(cls, data: dict) -> "ProgressRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def check_key(key: str) -> str:
    """``key`` if it can name a record file (letters, digits, '_', '-', '.'); ValueError otherwise."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"progress key {key!r} must be letters, digits, '_', '-' and '.'")
    return key


def record_path(run_dir: str | Path, key: str) -> Path:
    return Path(run_dir) / PROGRESS_DIR / f"{check_key(key)}.json"


def read_records(run_dir: str | Path, since: float | None = None) -> list[ProgressRecord]:
    """The run's records in the order their stages started; ``since`` (epoch seconds) keeps only
    those started at or after it (earlier runs of the directory left the others)."""
    out = []
    for path in sorted((Path(run_dir) / PROGRESS_DIR).glob("*.json")):
        try:
            rec = ProgressRecord.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # a file of another version: not ours to show
            continue
        if since is None or rec.started_at >= since:
            out.append(rec)
    return sorted(out, key=lambda r: (r.started_at, r.key))


def _write(path: Path, rec: ProgressRecord) -> None:
    # Temp name per thread: two threads of one process never share it (fc_base.io names it per pid).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(rec)) + "\n")
    os.replace(tmp, path)  # no fsync: a record lost in a crash costs nothing


_RUN_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("fc_sae_progress_run_dir", default=None)


@contextlib.contextmanager
def run_scope(run_dir: str | Path) -> Iterator[Path]:
    """Make ``run_dir`` the directory :func:`stage_progress` writes to in this thread (the stage
    functions open one, so code they call reports progress without being handed the directory)."""
    token = _RUN_DIR.set(Path(run_dir))
    try:
        yield Path(run_dir)
    finally:
        _RUN_DIR.reset(token)


def current_run_dir() -> Path | None:
    """The run directory of the innermost :func:`run_scope`, or None outside any."""
    return _RUN_DIR.get()


class StageProgress:
    """A stage's progress record (and, with ``bar``, its tqdm bar); duck-types the part of tqdm the
    stages use (``update``, ``set_postfix``, ``close``) so it can be handed where a bar was."""

    def __init__(self, run_dir: str | Path | None, key: str, total: int | None = None, unit: str = "it", *,
                 label: str | None = None, initial: int = 0, bar: bool = False, unit_scale: bool = False) -> None:
        check_key(key)  # also where nothing is written: a bad key fails alike with or without a run
        self.path = record_path(run_dir, key) if run_dir is not None else None
        now = time.time()
        self.record = ProgressRecord(key, label or key.replace(".", " "), unit, total, initial, initial,
                                     now, now, None, RUNNING, unit_scale=unit_scale)
        self._bar = None
        if bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=self.record.label, unit=unit,
                             unit_scale=unit_scale, dynamic_ncols=True)
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._timer: threading.Timer | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._flush()

    def update(self, n: int = 1, note: str | None = None) -> None:
        """Count ``n`` more units done; ``note`` (if given) replaces what it says it is doing, in the
        same write (a count and a stale note are never shown together)."""
        self.record.done += n
        if note is not None:
            self.record.note = note
            if self._bar is not None:
                self._bar.set_postfix_str(note, refresh=False)
        if self._bar is not None:
            self._bar.update(n)
        self._changed()

    def set(self, done: int) -> None:
        """Set the units done so far (for a stage that counts from outside, e.g. a manifest)."""
        if done == self.record.done:
            return
        if self._bar is not None:
            self._bar.update(done - self.record.done)
        self.record.done = done
        self._changed()

    def set_postfix(self, **values) -> None:
        self.record.note = " ".join(f"{k}={v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(**values)
        self._changed()

    def note(self, text: str) -> None:
        """Say what the stage is doing now (shown after its bar)."""
        self.record.note = text
        if self._bar is not None:
            self._bar.set_postfix_str(text)
        self._changed()

    def close(self, status: str = DONE) -> None:
        if self.record.finished:
            return
        if self._timer is not None:
            self._timer.cancel()
        self.record.status, self.record.finished_at = status, time.time()
        if self._bar is not None:
            self._bar.close()
        self._flush()

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(DONE if exc_type is None else FAILED)

    def _changed(self) -> None:
        if self.path is None:
            return
        wait = self._last_write + MIN_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self._flush()
        elif self._timer is None:  # write this update when the interval ends
            self._timer = threading.Timer(wait, self._flush)
            self._timer.daemon = True
            self._timer.start()

    def _flush(self) -> None:
        if self.path is None:
            return
        with self._lock:
            self._timer = None
            self.record.updated_at = time.time()
            _write(self.path, dataclasses.replace(self.record))
            self._last_write = time.monotonic()


def stage_progress(key: str, total: int | None = None, unit: str = "it", *, run_dir: str | Path | None = None,
                   label: str | None = None, initial: int = 0, bar: bool = False,
                   unit_scale: bool = False) -> StageProgress:
    """Open the progress record ``key`` in ``run_dir`` (default: :func:`current_run_dir`; none: a
    record that writes nothing). Use it as a context manager: leaving it marks the record done, or
    failed when an exception leaves it.

        with stage_progress("eval.absorption-probe", total=2, unit="step", label="absorption probe") as p:
            ...; p.update()
    """
    return StageProgress(run_dir if run_dir is not None else current_run_dir(), key, total, unit, label=label,
                         initial=initial, bar=bar, unit_scale=unit_scale)


def mark_on_disk(run_dir: str | Path, key: str, *, label: str | None = None, unit: str = "it") -> None:
    """Record that stage ``key`` found its work already complete on disk."""
    with StageProgress(run_dir, key, unit=unit, label=label) as p:
        p.record.note = "already on disk"
        p.close(ON_DISK)
