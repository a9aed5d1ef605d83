"""Harvesting a synthetic model into the activation store.

The rows of group ``g`` are the first rows of the sampler stream seeded by ``(corpus.seed, g)``
(:func:`group_seed`), cut into whole shards in order: rows are independent draws, so no shuffle is
needed, and every shard is a pure function of (config, shard index), as for language models (resume
and Dask workers write identical shards). Companion arrays: ``token_ids`` -1 (there are no tokens),
``doc_ids`` the group, ``positions`` the row's index in its group's stream.

The ground truth of the stored rows is not kept: evaluation draws its own held-out rows, with their
true feature activations, from a stream whose seed no harvest uses (:data:`HELDOUT_SEED_OFFSET`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cache_tools.layout import read_spec
from cache_tools.writer import StoreWriter, acts_to_storage
from pipeline.config import RunConfig
from pipeline.harvest_groups import HarvestError, HarvestPlan

_GROUP_SEED_SALT = 0x53594E54  # keeps harvest streams apart from any other use of the seed
SAMPLE_BATCH_ROWS = 16384


def group_seed(corpus_seed: int, group: int) -> int:
    """Seed of group ``group``'s sampler stream (below 2**62; held-out eval seeds are small)."""
    return int(np.random.SeedSequence([corpus_seed, _GROUP_SEED_SALT, group]).generate_state(1, np.uint64)[0]
               >> np.uint64(2)) | (1 << 40)


def synthetic_plan(cfg: RunConfig) -> HarvestPlan:
    return HarvestPlan(cfg.harvest.n_tokens, cfg.harvest.shard_rows, cfg.harvest.shuffle_buffer_shards, 1)


class SyntheticGroupHarvester:
    """Loads the synthetic model once and writes whole groups of shards (GroupHarvester's interface)."""

    def __init__(self, cfg: RunConfig, root: Path, **_unused) -> None:
        from pipeline.synthetic_models import load_synthetic_model

        self.cfg = cfg
        self.plan = synthetic_plan(cfg)
        self.writer = StoreWriter(root, read_spec(root))
        self.model = load_synthetic_model(cfg.model.name, cfg.model.synthetic_config or None)

    def __enter__(self) -> "SyntheticGroupHarvester":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def run(self, groups: list[int], *, progress: bool = True, total_rows: int | None = None) -> int:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_rows, unit="row", unit_scale=True, desc="harvest (synthetic)", disable=not progress,
                   dynamic_ncols=True)
        try:
            return sum(self.run_group(g, bar) for g in groups)
        finally:
            bar.close()

    def run_group(self, g: int, bar=None) -> int:
        from pipeline.synthetic_models import sample_batches

        plan, spec = self.plan, self.writer.spec
        todo = [s for s in plan.group_shard_range(g) if s not in self.writer.committed()]
        if not todo:
            return 0
        r0, r1 = plan.group_rows(g)
        acts_ND = torch.empty((r1 - r0, spec.d_model), dtype=spec.torch_dtype)
        at = 0
        for x_BD, _ in sample_batches(self.model, r1 - r0, SAMPLE_BATCH_ROWS, group_seed(self.cfg.corpus.seed, g)):
            if not torch.isfinite(x_BD).all():
                raise HarvestError(f"synthetic model {self.cfg.model.name} produced inf/NaN in group {g}")
            acts_ND[at:at + len(x_BD)] = x_BD
            at += len(x_BD)
            if bar is not None:
                bar.update(len(x_BD))
        written = 0
        for shard in todo:
            s0, s1 = spec.shard_row_range(shard)
            rows = np.arange(s0 - r0, s1 - r0, dtype=np.int32)
            self.writer.write_shard(shard, acts_to_storage(acts_ND[s0 - r0:s1 - r0], self.cfg.harvest.store_dtype),
                                    np.full(len(rows), -1, dtype=np.int32), np.full(len(rows), g, dtype=np.int32), rows)
            written += s1 - s0
        return written
