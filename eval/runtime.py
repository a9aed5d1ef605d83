"""What eval adapters share: a forward that stops after the SAE's layer, and a file lock for
artifacts shared by the SAEs of a run."""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def stop_after_layer(model, layer: int) -> Iterator[object]:
    """SAE-Bench's absorption code runs full forwards; the SAE only needs the residual stream after
    ``layer``, so ``run_with_cache`` stops there (the blocks above and the unembedding are skipped).

    Cached activations come back as float32 so a bfloat16 model feeds float32 probes and SAEs
    (sae-bench mixes them in matmuls that need one dtype)."""
    original = model.run_with_cache

    def run_with_cache(*args, **kwargs):
        kwargs["stop_at_layer"] = layer + 1
        out, cache = original(*args, **kwargs)
        return out, {name: acts.float() for name, acts in cache.items()}

    model.run_with_cache = run_with_cache
    try:
        yield model
    finally:
        del model.run_with_cache  # drop the instance override; the class method shows through again


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock so parallel eval tasks build a shared artifact once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
