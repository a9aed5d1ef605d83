"""Exact resume after a real SIGKILL, and the NaN/inf guard."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from cache_tools import open_store
from tests.trainers_fixtures import synthetic_acts, write_store
from trainers.training.config import TrainConfig
from trainers.training.data import InMemoryActivations
from trainers.training.export import ModelInfo
from trainers.training.loop import TrainingDivergedError, train_sae

REPO = Path(__file__).resolve().parents[1]
INFO = ModelInfo("synthetic", "tiny-random", 0, "blocks.0.hook_resid_post")
CFG = dict(d_sae=128, k=4, n_tokens=64 * 40, batch_size=64, resample_every=5, checkpoint_every=20,
           snapshot_every=5, log_every=3, reservoir_rows=512, dead_after_tokens=256, norm_rows=1024,
           options={"fc": {"max_split_frac": 0.05, "dead_freq": 0.02}}, tracker={"beta": 0.8}, seeds=[0],
           trainers=["fc_topk"], device="cpu")

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from cache_tools import open_store
    from trainers.training.config import TrainConfig
    from trainers.training.export import ModelInfo
    from trainers.training.loop import train_sae
    cfg = TrainConfig(**{cfg!r})
    def die(step):
        os.kill(os.getpid(), signal.SIGKILL)
    train_sae(open_store(Path({store!r})), cfg, "fc_topk", 0, Path({out!r}),
              ModelInfo("synthetic", "tiny-random", 0, "blocks.0.hook_resid_post"),
              on_checkpoint=die, progress=False)
""")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("resume") / "cache", synthetic_acts(2048, 32, seed=3),
                       shard_rows=1024, chunk_rows=256)


def test_sigkill_then_resume_gives_the_same_sae_as_a_straight_run(store_path, tmp_path):
    cfg = TrainConfig(**CFG)
    straight = tmp_path / "straight"
    result = train_sae(open_store(store_path), cfg, "fc_topk", 0, straight, INFO, progress=False)
    assert result.events["splits"] > 0, "the run must exercise splitting before and after the checkpoint"

    resumed = tmp_path / "resumed"
    code = CHILD.format(cfg=CFG, store=str(store_path), out=str(resumed))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (resumed / "checkpoints" / "step_000000020.pt").exists()
    assert not (resumed / "sae_meta.json").exists() and not (resumed / "sae_weights.safetensors").exists()

    train_sae(open_store(store_path), cfg, "fc_topk", 0, resumed, INFO, progress=False)
    a, b = load_file(straight / "sae_weights.safetensors"), load_file(resumed / "sae_weights.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7, msg=name)
    for table in ("fc_history.parquet", "splits.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(straight / table), pd.read_parquet(resumed / table),
                                      rtol=1e-5)
    log_a = pd.read_json(straight / "train_log.jsonl", lines=True)
    log_b = pd.read_json(resumed / "train_log.jsonl", lines=True)
    assert log_a["step"].tolist() == log_b["step"].tolist()
    np.testing.assert_allclose(log_a["loss"], log_b["loss"], rtol=1e-5)


def test_nan_in_input_stops_training_naming_the_step(tmp_path):
    acts = torch.from_numpy(synthetic_acts(1024, 16, seed=1))
    bad_row = 700
    acts[bad_row, 5] = float("nan")
    source = InMemoryActivations(acts)
    # norm_rows stops before the bad row so the failure is in training, not in normalisation
    cfg = TrainConfig(d_sae=32, k=4, n_tokens=64 * 16, batch_size=64, norm_rows=512, seeds=[0],
                      trainers=["topk"], checkpoint_every=2, reservoir_rows=128)
    order = list(source.iter_batches(64, seed=0))
    expected_step = next(i for i, x in enumerate(order) if bool(torch.isnan(x).any()))
    with pytest.raises(TrainingDivergedError, match=rf"^step {expected_step}: input batch contains inf/NaN"):
        train_sae(source, cfg, "topk", 0, tmp_path / "sae", INFO, progress=False)
    assert not (tmp_path / "sae" / "sae_weights.safetensors").exists()
    assert not (tmp_path / "sae" / "sae_meta.json").exists()
    for ckpt in (tmp_path / "sae" / "checkpoints").glob("*.pt"):
        state = torch.load(ckpt, weights_only=False)
        assert all(bool(torch.isfinite(t).all()) for t in state["model"].values())


def test_diverging_weights_stop_with_parameter_named(tmp_path):
    source = InMemoryActivations(torch.from_numpy(synthetic_acts(512, 16, seed=2)))
    cfg = TrainConfig(d_sae=32, k=4, n_tokens=64 * 4, batch_size=64, lr=1e37, warmup_frac=0.0, seeds=[0],
                      trainers=["relu_l1"], reservoir_rows=128, checkpoint_every=0)
    with pytest.raises(TrainingDivergedError, match=r"^step \d+: (loss|parameter \w+) contains inf/NaN"):
        train_sae(source, cfg, "relu_l1", 0, tmp_path / "sae", INFO, progress=False)
    assert not (tmp_path / "sae" / "sae_meta.json").exists()
