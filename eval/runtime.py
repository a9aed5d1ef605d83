"""What eval adapters share: a forward that stops after the SAE's layer, a file lock for artifacts
shared by the SAEs of a run, and private random generators for sae-bench's absorption code."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import math
import random
import threading
from pathlib import Path
from typing import Callable, Iterator

import torch


@contextlib.contextmanager
def stop_after_layer(model, layer: int, read_pos: int | None = None,
                     on_forward: Callable[[int], None] | None = None) -> Iterator[object]:
    """SAE-Bench's absorption code runs full forwards; the SAE only needs a hook of block ``layer``
    (its output, or what its MLP or attention adds), so ``run_with_cache`` stops after that block
    (the blocks above and the unembedding are skipped).

    With ``read_pos`` (a negative position, the only one the caller reads), a batch of prompts that
    all have the same token length also stops at that position: attention is causal, so the tokens
    after it cannot change it, and they are not run (about 6 of Gemma's 88 tokens of an absorption
    prompt). The cache then holds zeros after ``read_pos``. Every position up to it is computed by
    the same kernels on the same rows, so the activations are bit-identical (tested; the absorption
    benchmark checks it on the real model). Batches of unequal lengths run in full.

    Cached activations come back as float32 so a bfloat16 model feeds float32 probes and SAEs
    (sae-bench mixes them in matmuls that need one dtype). ``on_forward(n)`` is told after every
    forward how many prompts (rows) it ran: sae-bench's loops draw no progress of their own here."""
    original = model.run_with_cache

    def run_with_cache(*args, **kwargs):
        out, cache = forward(*args, **kwargs)
        if on_forward is not None:
            on_forward(len(next(iter(cache.values()))) if cache else 0)
        return out, cache

    def forward(*args, **kwargs):
        kwargs["stop_at_layer"] = layer + 1
        if read_pos is not None and args and _is_prompt_list(args[0]):
            tokens_BT = _equal_length_tokens(model, args[0])
            if tokens_BT is not None and tokens_BT.shape[1] + read_pos >= 0:
                kept = tokens_BT.shape[1] + read_pos + 1
                out, cache = original(tokens_BT[:, :kept], *args[1:], **kwargs)
                return out, {name: _pad_positions(acts, tokens_BT.shape[1]) for name, acts in cache.items()}
        out, cache = original(*args, **kwargs)
        return out, {name: acts.float() for name, acts in cache.items()}

    model.run_with_cache = run_with_cache
    try:
        yield model
    finally:
        del model.run_with_cache  # drop the instance override; the class method shows through again


def _is_prompt_list(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) for v in value)


def _equal_length_tokens(model, prompts) -> torch.Tensor | None:
    """The prompts' tokens as ``model.to_tokens`` makes them, or None when their lengths differ (then
    the batch is padded, and a position counted from the end is not the same token in every row)."""
    lengths = {len(ids) for ids in model.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]}
    if len(lengths) != 1:
        return None
    return model.to_tokens(list(prompts))


def _pad_positions(acts: torch.Tensor, n_positions: int) -> torch.Tensor:
    """(B, kept, ...) activations as float32 (B, n_positions, ...) with zeros after the kept ones."""
    out = acts.new_zeros((acts.shape[0], n_positions, *acts.shape[2:]), dtype=torch.float32)
    out[:, :acts.shape[1]] = acts
    return out


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


# sae-bench's absorption code draws from process-wide RNGs: Python's ``random`` (word split, in-context
# examples) and torch's default generator (probe initialisation, DataLoader shuffling). Under a thread
# pool (the Prefect flow) other tasks draw from them too, so identical inputs gave different prompts
# and probes. Each call below runs with private generators, one call at a time per process.
_SAE_BENCH_LOCK = threading.RLock()
_ABSORPTION_MODULES = ("sae_bench.evals.absorption.prompting", "sae_bench.evals.absorption.probing")


@contextlib.contextmanager
def private_sae_bench_rng(seed: int) -> Iterator[None]:
    """Run sae-bench's absorption prompting and probing with generators seeded by ``seed`` alone.

    Inside the block those modules see a private ``random.Random(seed)``, their probes are initialised
    and their DataLoaders shuffled from a private ``torch.Generator`` (and fed a batch at a time:
    :func:`batched_loader`), and no other thread of this process is inside such a block (the lock
    also covers the model's ``stop_after_layer`` override)."""
    import importlib

    with _SAE_BENCH_LOCK:
        mods = [importlib.import_module(name) for name in _ABSORPTION_MODULES]
        probing = mods[1]
        saved = [(m, attr, getattr(m, attr)) for m in mods for attr in ("random",)]
        saved += [(probing, "DataLoader", probing.DataLoader), (probing, "nn", probing.nn)]
        py_rng = random.Random(seed)
        gen = torch.Generator().manual_seed(seed)
        try:
            for m in mods:
                m.random = py_rng
            probing.DataLoader = functools.partial(batched_loader, generator=gen)
            probing.nn = _SeededNN(gen)
            yield
        finally:
            for m, attr, value in reversed(saved):
                setattr(m, attr, value)


class _RowBatches(torch.utils.data.Dataset):
    """A TensorDataset's rows fetched a batch at a time: ``__getitems__`` hands the batch's indices to
    the collate function, which gathers every tensor's rows with one index operation."""

    def __init__(self, tensors: tuple[torch.Tensor, ...]):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitems__(self, indices: list[int]) -> list[int]:
        return indices

    def gather(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices)
        return tuple(t[idx] for t in self.tensors)


def batched_loader(dataset, *args, **kwargs):
    """``DataLoader(dataset, ...)`` as sae-bench's probe training calls it, with the same batches in
    the same order (torch's own samplers, the same generator draws), but a TensorDataset's rows
    gathered per batch instead of fetched and stacked one by one (about 4 s of each k-sparse probe
    training on 2 cores). The rows are copies of the same values, so training is bit-identical."""
    from torch.utils.data import DataLoader, TensorDataset

    if isinstance(dataset, TensorDataset) and "collate_fn" not in kwargs:
        rows = _RowBatches(dataset.tensors)
        return DataLoader(rows, *args, collate_fn=rows.gather, **kwargs)
    return DataLoader(dataset, *args, **kwargs)


class _SeededNN:
    """``torch.nn`` as sae-bench's probing module sees it inside ``private_sae_bench_rng``: the same,
    except that ``Linear`` layers (its probes) are initialised from a private generator, with
    ``nn.Linear``'s own default range. The layers and probes stay the real classes (they are pickled)."""

    def __init__(self, gen: torch.Generator):
        self._gen = gen

    def __getattr__(self, name: str):
        return getattr(torch.nn, name)

    def Linear(self, in_features: int, out_features: int, *args, **kwargs) -> torch.nn.Linear:  # noqa: N802
        layer = torch.nn.Linear(in_features, out_features, *args, **kwargs)
        bound = 1.0 / math.sqrt(in_features)
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound, generator=self._gen)
            if layer.bias is not None:
                layer.bias.uniform_(-bound, bound, generator=self._gen)
        return layer
