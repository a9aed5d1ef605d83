"""Producing the harvest's groups of shards: the row -> group -> shard -> corpus-window plan, and
the worker that forwards a group's windows through the model and writes its whole shards.

Shared by the in-process harvest (pipeline.harvest) and the Dask workers (pipeline.harvest_dask);
it imports neither, so the two stay acyclic.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cache_tools.layout import read_spec
from cache_tools.writer import StoreWriter, acts_to_storage
from pipeline.config import RunConfig

_SHUFFLE_SALT = 0x48415256  # keeps the harvest shuffle stream apart from other uses of the seed


class HarvestError(RuntimeError):
    """The harvest cannot proceed (bad activations, corpus too small, conflicting store)."""


@dataclass(frozen=True)
class HarvestPlan:
    """How global rows map onto groups, shards and corpus windows."""

    n_rows: int
    """Rows in the finished store (harvest.n_tokens)."""
    shard_rows: int
    """Rows per shard."""
    group_shards: int
    """Shards per shuffle group (harvest.shuffle_buffer_shards)."""
    rows_per_window: int
    """Rows each context window contributes (context length minus a dropped BOS)."""

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_rows / self.shard_rows)

    @property
    def n_groups(self) -> int:
        return math.ceil(self.n_shards / self.group_shards)

    def group_of(self, shard: int) -> int:
        return shard // self.group_shards

    def group_shard_range(self, g: int) -> range:
        return range(g * self.group_shards, min((g + 1) * self.group_shards, self.n_shards))

    def group_rows(self, g: int) -> tuple[int, int]:
        start = g * self.group_shards * self.shard_rows
        return start, min(start + self.group_shards * self.shard_rows, self.n_rows)

    def group_windows(self, g: int) -> tuple[int, int]:
        r0, r1 = self.group_rows(g)
        return r0 // self.rows_per_window, math.ceil(r1 / self.rows_per_window)


def make_plan(cfg: RunConfig, tokenizer) -> HarvestPlan:
    drop_bos = cfg.harvest.exclude_bos and tokenizer.bos_token_id is not None
    rpw = cfg.corpus.context_length - (1 if drop_bos else 0)
    return HarvestPlan(cfg.harvest.n_tokens, cfg.harvest.shard_rows, cfg.harvest.shuffle_buffer_shards, rpw)


class _WindowCursor:
    """Sequential access to the corpus' packed windows; consecutive groups share one pass."""

    def __init__(self, cfg: RunConfig, tokenizer) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer
        self._it = None
        self.pos = -1
        self._last: tuple | None = None  # window pos - 1: groups may share a boundary window

    def take(self, start: int, stop: int) -> list[tuple]:
        from pipeline.corpus import iter_windows

        out: list[tuple] = []
        if start == self.pos - 1 and self._last is not None:
            out.append(self._last)
            start += 1
        if start != self.pos:
            self._it = itertools.islice(iter_windows(self.cfg.corpus, self.tokenizer), start, None)
            self.pos = start
        fresh = list(itertools.islice(self._it, stop - start))
        self.pos = start + len(fresh)
        out += fresh
        if out:
            self._last = out[-1]
        return out


class GroupHarvester:
    """Loads the model once and produces (then writes) whole groups of shards."""

    def __init__(self, cfg: RunConfig, root: Path, *, tokenizer=None) -> None:
        from pipeline.models import load_model, load_tokenizer, resolve_device
        from pipeline.truncated_forward import TruncatedForward

        self.cfg = cfg
        self.tokenizer = tokenizer or load_tokenizer(cfg.model.name, source=cfg.model.source)
        self.plan = make_plan(cfg, self.tokenizer)
        self.writer = StoreWriter(root, read_spec(root))
        model = load_model(cfg.model.name, source=cfg.model.source, dtype=cfg.model.dtype,
                           device=resolve_device(cfg.model.device))
        self.forward = TruncatedForward(model, cfg.model.layer, cfg.model.hook)
        self.cursor = _WindowCursor(cfg, self.tokenizer)
        self.drop_bos = self.plan.rows_per_window < cfg.corpus.context_length
        self.store_dtype = self.writer.spec.torch_dtype

    def __enter__(self) -> "GroupHarvester":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.forward.close()

    def run(self, groups: list[int], *, progress: bool = True, total_rows: int | None = None) -> int:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_rows, unit="tok", unit_scale=True, desc="harvest", disable=not progress,
                   dynamic_ncols=True)
        written = 0
        try:
            for g in groups:
                written += self.run_group(g, bar)
        finally:
            bar.close()
        return written

    def run_group(self, g: int, bar=None) -> int:
        """Produce group ``g`` and write its shards that the manifest does not list yet."""
        plan, cfg = self.plan, self.cfg
        todo = [s for s in plan.group_shard_range(g) if s not in self.writer.committed()]
        if not todo:
            return 0
        r0, r1 = plan.group_rows(g)
        w0, w1 = plan.group_windows(g)
        n, rpw = r1 - r0, plan.rows_per_window
        acts_ND = torch.empty((n, self.writer.spec.d_model), dtype=self.store_dtype)
        tokens_3N = np.empty((3, n), dtype=np.int32)  # token_ids, doc_ids, positions
        for b0 in range(w0, w1, cfg.harvest.batch_size):
            b1 = min(b0 + cfg.harvest.batch_size, w1)
            windows = self.cursor.take(b0, b1)
            if len(windows) < b1 - b0:
                raise HarvestError(
                    f"corpus '{cfg.corpus.source}' ran out after {b0 + len(windows)} windows of "
                    f"{cfg.corpus.context_length} tokens; harvest.n_tokens={plan.n_rows} needs "
                    f"{math.ceil(plan.n_rows / rpw)}: lower n_tokens or add text")
            lo = max(r0 - b0 * rpw, 0)  # rows of this batch inside the group
            hi = min(r1 - b0 * rpw, (b1 - b0) * rpw)
            dst = b0 * rpw + lo - r0
            self._place_batch_rows(windows, lo, hi, acts_ND[dst:dst + hi - lo], f"{b0}..{b1 - 1} (group {g}")
            tok_3BT = np.asarray([[w[i] for w in windows] for i in range(3)], dtype=np.int32)
            if self.drop_bos:
                tok_3BT = tok_3BT[:, :, 1:]
            tokens_3N[:, dst:dst + hi - lo] = tok_3BT.reshape(3, -1)[:, lo:hi]
            if bar is not None:
                bar.update(hi - lo)
        perm = np.random.default_rng([cfg.corpus.seed, _SHUFFLE_SALT, g]).permutation(n)
        for shard in todo:
            s0, s1 = self.writer.spec.shard_row_range(shard)
            idx = perm[s0 - r0:s1 - r0]
            self.writer.write_shard(
                shard, acts_to_storage(acts_ND.index_select(0, torch.from_numpy(idx)), cfg.harvest.store_dtype),
                *(np.ascontiguousarray(tokens_3N[i, idx]) for i in range(3)))
        return sum(self.writer.spec.shard_row_range(s)[1] - self.writer.spec.shard_row_range(s)[0] for s in todo)

    def _place_batch_rows(self, windows: list[tuple], lo: int, hi: int, out_RD: torch.Tensor, label: str) -> None:
        """Forward a batch of windows and copy its rows [lo, hi) (BOS dropped) into ``out_RD``
        (store dtype), failing loudly on NaN/inf or on overflow of the store dtype."""
        token_ids_BT = torch.tensor([w[0] for w in windows], dtype=torch.int64)
        resid_BTD = self.forward(token_ids_BT)
        where = f"windows {label}, layer {self.cfg.model.layer}, {self.cfg.model.name})"
        if self.drop_bos:
            if not all(w[1][0] == -1 for w in windows):
                raise HarvestError(f"expected BOS at the start of every window in {where}")
            resid_BTD = resid_BTD[:, 1:]
        B, T, D = resid_BTD.shape
        if lo == 0 and hi == B * T:  # the usual case: one strided copy, converting on the way
            out_RD.view(B, T, D).copy_(resid_BTD)
        else:
            out_RD.copy_(resid_BTD.reshape(B * T, D)[lo:hi])
        # One float32 reduction sees any NaN/inf in the batch (and is far cheaper than isfinite);
        # checking the stored copy also catches values that overflow the store dtype.
        if not torch.isfinite(torch.sum(out_RD, dtype=torch.float32)):
            if not torch.isfinite(resid_BTD).all():
                raise HarvestError(f"NaN/inf activations in the harvest batch of {where}; "
                                   f"model.dtype is {self.cfg.model.dtype} (float32 is the most robust)")
            if not torch.isfinite(out_RD).all():
                raise HarvestError(f"activations of {where} overflow harvest.store_dtype="
                                   f"{self.cfg.harvest.store_dtype} (max |x| {resid_BTD.abs().max().item():.4g}); "
                                   f"use store_dtype bfloat16 or float32")
