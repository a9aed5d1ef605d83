"""What every eval adapter shares: the language model (loaded once per process), a forward that
stops after the SAE's layer, and a file lock for artifacts shared by the SAEs of a run."""
from __future__ import annotations

import contextlib
import fcntl
import threading
from pathlib import Path
from typing import Iterator

import pipeline  # noqa: F401  (Hugging Face environment before torch/transformers imports)
import torch

from eval.config import EvalConfig

_MODELS: dict[tuple[str, str, str, str], object] = {}
_MODELS_LOCK = threading.Lock()


def eval_device(cfg: EvalConfig) -> str:
    from pipeline.models import resolve_device

    return resolve_device(cfg.device)


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def hooked_model(name: str, source: str, cfg: EvalConfig):
    """The TransformerLens model by official name; loaded once per process and reused by every SAE."""
    from pipeline.models import load_hooked_model

    key = (name, source, cfg.llm_dtype, eval_device(cfg))
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS.clear()  # one model in memory at a time
            _MODELS[key] = load_hooked_model(name, source=source, dtype=cfg.llm_dtype, device=key[3])
        return _MODELS[key]


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
