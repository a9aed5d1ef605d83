"""Maintenance event tables are generic: a new kind of surgery declares its table and its recipe, and
the shared loop logs, counts and writes it without being edited."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from tests.trainers_fixtures import synthetic_acts
from trainers.saes.topk import TOPK
from trainers.training.config import TrainConfig
from trainers.training.data import InMemoryActivations
from trainers.training.events import EVENT_TABLES, EventTable, event_tables, register_event_table
from trainers.training.export import ModelInfo
from trainers.training.loop import train_sae
from trainers.training.recipe import RECIPES, MaintenanceResult, Recipe, register

INFO = ModelInfo("synthetic", "tiny-random", 0, "blocks.0.hook_resid_post")
CFG = dict(d_sae=64, k=4, n_tokens=64 * 12, batch_size=64, resample_every=4, log_every=2, snapshot_every=4,
           reservoir_rows=256, dead_after_tokens=256, norm_rows=512, seeds=[0], trainers=["topk"], device="cpu")


def _probe_maintain(ctx) -> MaintenanceResult:
    """Logs the most frequent latent at every maintenance step (4 and 8 of 12 steps: none in the
    settling phase), rewriting nothing."""
    latent = int(ctx.tracker.frequency.argmax())
    return MaintenanceResult(torch.empty(0, dtype=torch.long), {"probes": [{"step": ctx.step, "latent": latent}]})


@pytest.fixture
def probe_recipes():
    """A table and two recipes registered for one test, removed afterwards (the registries are global)."""
    EVENT_TABLES._load()
    table = register_event_table(EventTable("probes", "probes.parquet", {"step": "int64", "latent": "int64"},
                                            "the most frequent latent at a maintenance step"))
    good = register(Recipe("topk_probe", "TopK + a probe event", TOPK.build, TOPK.options,
                           maintain=_probe_maintain, events=("probes",)))
    bad = register(Recipe("topk_probe_undeclared", "TopK + an undeclared event", TOPK.build, TOPK.options,
                          maintain=_probe_maintain))
    yield table, good, bad
    EVENT_TABLES._items.pop(table.name)
    for recipe in (good, bad):
        RECIPES._items.pop(recipe.name)


def test_a_new_event_table_is_logged_counted_and_written_by_the_shared_loop(probe_recipes, tmp_path):
    source = InMemoryActivations(torch.from_numpy(synthetic_acts(1024, 16, seed=1)))
    result = train_sae(source, TrainConfig(**CFG), "topk_probe", 0, tmp_path / "sae", INFO, progress=False)
    probes = pd.read_parquet(tmp_path / "sae" / "probes.parquet")
    assert list(probes.columns) == ["step", "latent"] and len(probes) == result.events["probes"] == 2
    assert probes["step"].tolist() == [4, 8] and str(probes["latent"].dtype) == "int64"
    log = [json.loads(line) for line in (tmp_path / "sae" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["n_probes"] == 2 and log[-1]["n_splits"] == 0 and log[-1]["n_repairs"] == 0
    # Every folder holds every registered table, empty where the recipe made no such event.
    assert pd.read_parquet(tmp_path / "sae" / "splits.parquet").empty
    assert [t.name for t in event_tables()][:2] == ["splits", "repairs"]


def test_rows_for_an_undeclared_table_are_one_clear_error(probe_recipes, tmp_path):
    source = InMemoryActivations(torch.from_numpy(synthetic_acts(1024, 16, seed=1)))
    with pytest.raises(ValueError, match="recipe 'topk_probe_undeclared' logged probes events but declares none"):
        train_sae(source, TrainConfig(**CFG), "topk_probe_undeclared", 0, tmp_path / "sae", INFO, progress=False)
