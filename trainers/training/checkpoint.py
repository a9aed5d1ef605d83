"""Checkpoint files: atomic writes, newest-first loading that skips damaged files."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fc_base.io import write_atomic

PREFIX = "step_"


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"{PREFIX}{step:09d}.pt"


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob(f"{PREFIX}*.pt"))


def save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(ckpt_dir, step)
    write_atomic(path, lambda tmp: torch.save(state, tmp))
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(ckpt_dir: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint, or None. A file cut short by a crash is skipped."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - any unreadable file means: fall back to an older one
            continue
    return None
