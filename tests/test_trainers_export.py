"""Exported SAEs load in SAELens and encode/decode raw activations exactly as the trained module
does on normalised ones; the train stage writes the documented folder."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from pipeline.config import get_preset
from pipeline.train import train
from tests.trainers_fixtures import synthetic_acts, write_store
from trainers.fc.splitting import SPLITS
from trainers.training.config import TrainConfig
from trainers.training.export import ModelInfo, export_sae
from trainers.training.registry import build_sae

D, M, K = 24, 48, 4
META_FIELDS = {"name", "trainer", "seed", "architecture", "k", "d_in", "d_sae", "model_name", "model_source",
               "layer", "hook_name", "train_tokens", "l0_target", "final_l0", "norm_scale", "threshold_calibration"}
LOG_FIELDS = {"step", "tokens", "loss", "mse", "aux_loss", "l0", "frac_alive", "explained_variance", "lr"}


def encode_rule(w: dict[str, torch.Tensor], arch: str, k: int | None, x: torch.Tensor) -> torch.Tensor:
    """docs/ARCHITECTURE.md's encoding rule, written independently of the training modules."""
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if arch == "topk":
        post = pre.relu()
        vals, idx = post.topk(k, dim=1)
        return torch.zeros_like(post).scatter_(1, idx, vals)
    if arch == "relu":
        return pre.relu()
    return pre * (pre > w["threshold"])


@pytest.mark.parametrize("trainer", ["topk", "relu_l1", "batchtopk", "matryoshka"])
def test_sae_lens_loads_the_export_and_matches_our_encode_decode(trainer, tmp_path):
    from safetensors.torch import load_file
    from sae_lens import SAE

    gen = torch.Generator().manual_seed(0)
    model = build_sae(trainer, TrainConfig(d_sae=M, k=K, options={"matryoshka": {"group_fractions": [0.25, 0.75]}}), D, gen)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        model.normalise_decoder()
        if hasattr(model, "threshold"):
            model.threshold.fill_(0.05)
    scale = 0.37
    export_sae(model, tmp_path, scale, ModelInfo("synthetic", "tiny-random", 2, "blocks.2.hook_resid_post"))
    sae = SAE.load_from_disk(tmp_path)
    raw_x = torch.randn(32, D, generator=gen) * 3
    ours = model.encode(raw_x * scale)
    theirs = sae.encode(raw_x).detach()
    assert int((ours > 0).sum()) > 0
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sae.decode(theirs).detach(), model.decode(ours).detach() / scale, atol=1e-5, rtol=1e-4)
    weights = load_file(tmp_path / "sae_weights.safetensors")
    assert weights["W_enc"].shape == (D, M) and weights["W_dec"].shape == (M, D)
    torch.testing.assert_close(encode_rule(weights, model.architecture, model.k, raw_x), ours, atol=1e-5, rtol=1e-4)
    assert ("threshold" in weights) == (model.architecture == "jumprelu")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post" and cfg["d_in"] == D


def test_export_refuses_nan_weights(tmp_path):
    model = build_sae("topk", TrainConfig(d_sae=M, k=K), D, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.W_enc[0, 0] = float("nan")
    with pytest.raises(ValueError, match="inf/NaN in W_enc"):
        export_sae(model, tmp_path, 1.0, ModelInfo("m"))
    assert not (tmp_path / "sae_weights.safetensors").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny preset's training on a real store of 16384 rows (d_model 64)."""
    run_dir = tmp_path_factory.mktemp("run")
    write_store(run_dir / "cache", synthetic_acts(16384, 64, seed=0))
    cfg = get_preset("tiny")
    cfg.train.trainers = ["topk", "fc_topk"]
    paths = train(cfg, run_dir, progress=False)
    return cfg, run_dir, paths


def test_train_stage_writes_the_documented_sae_folders(tiny_run):
    from sae_lens import SAE

    cfg, run_dir, paths = tiny_run
    assert [p.name for p in paths] == ["topk_s0", "fc_topk_s0"]
    for path in paths:
        for name in ("sae_weights.safetensors", "cfg.json", "sae_meta.json", "train_config.json",
                     "train_log.jsonl", "fc_history.parquet", "splits.parquet"):
            assert (path / name).is_file(), name
        assert list((path / "checkpoints").glob("step_*.pt"))
        meta = json.loads((path / "sae_meta.json").read_text())
        assert set(meta) == META_FIELDS
        assert meta["architecture"] == "topk" and meta["k"] == meta["l0_target"] == cfg.train.k
        assert meta["threshold_calibration"] is None  # only the BatchTopK family has a threshold
        assert meta["d_in"] == 64 and meta["d_sae"] == cfg.train.d_sae and meta["hook_name"] == cfg.model.hook
        assert abs(meta["final_l0"] - cfg.train.k) < 0.5
        log = pd.read_json(path / "train_log.jsonl", lines=True)
        assert LOG_FIELDS <= set(log.columns)
        assert log["explained_variance"].iloc[-1] > 0.5, "the SAE must actually learn"
        history = pd.read_parquet(path / "fc_history.parquet")
        assert list(history.columns) == ["step", "latent", "frequency", "consistency", "absorption_score",
                                         "hole_rate", "hole_score", "encoder_suppression"]
        last = history[history["step"] == history["step"].max()]
        assert last["encoder_suppression"].notna().all() and last["hole_rate"].between(0, 1).all()
        assert history.groupby("step").size().eq(cfg.train.d_sae).all()
        sae = SAE.load_from_disk(path)
        x = torch.randn(8, 64) * 40
        assert sae.encode(x).shape == (8, cfg.train.d_sae)
    fc_splits = pd.read_parquet(run_dir / "saes" / "fc_topk_s0" / "splits.parquet")
    topk_splits = pd.read_parquet(run_dir / "saes" / "topk_s0" / "splits.parquet")
    assert list(fc_splits.columns) == list(topk_splits.columns) == SPLITS.columns
    assert len(fc_splits) >= 1 and len(topk_splits) == 0
    assert (fc_splits["step"] < 0.8 * cfg.train.total_steps).all()


def test_train_stage_skips_complete_saes_and_rejects_bad_input(tiny_run, tmp_path):
    cfg, run_dir, paths = tiny_run
    stamps = [(p / "sae_meta.json").stat().st_mtime_ns for p in paths]
    assert train(cfg, run_dir, progress=False) == paths
    assert train(cfg, run_dir, trainer="fc_topk", seed=0, progress=False) == [paths[1]]
    assert [(p / "sae_meta.json").stat().st_mtime_ns for p in paths] == stamps
    with pytest.raises(ValueError, match="unknown trainer 'nope'"):
        train(cfg, run_dir, trainer="nope")
    with pytest.raises(FileNotFoundError, match="run the harvest stage first"):
        train(cfg, tmp_path)
