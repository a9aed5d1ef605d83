"""Core eval's cached clean/ablated forwards give sae-bench's own metrics bit for bit (tiny model)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_hooked(tiny_cfg, tiny_model_dir):
    from pipeline.models import load_hooked_model

    return load_hooked_model(tiny_cfg.model.name, source=tiny_cfg.model.source)


def _relu_sae(model, seed: int):
    from sae_bench.custom_saes.relu_sae import ReluSAE

    torch.manual_seed(seed)
    sae = ReluSAE(model.cfg.d_model, 64, model.cfg.model_name, 1, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec):
            p.normal_(0, 0.2)
        sae.b_enc.normal_(0, 0.1)
    return sae


@pytest.mark.parametrize("exclude", [True, False])
def test_cached_metrics_equal_sae_bench_for_several_saes(tiny_hooked, exclude):
    from sae_bench.evals.core import main as core_main

    from eval.core import reference_forwards as rf

    model = tiny_hooked
    rf.clear(model)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, model.cfg.d_vocab, (3, 24), generator=gen) for _ in range(2)]
    ignore = {int(batches[0][0, 0]), int(batches[1][2, 5])}
    original = core_main.get_recons_loss
    for sae_seed in (1, 2):  # the second SAE reads the first one's cached reference batches
        sae = _relu_sae(model, sae_seed)
        for tokens in batches:
            want = original(sae, model, tokens, None, compute_kl=True, compute_ce_loss=True, ignore_tokens=ignore,
                            exclude_special_tokens_from_reconstruction=exclude)
            with rf.shared_reference_forwards():
                assert core_main.get_recons_loss is rf.cached_recons_loss
                got = core_main.get_recons_loss(sae, model, tokens, None, compute_kl=True, compute_ce_loss=True,
                                                ignore_tokens=ignore,
                                                exclude_special_tokens_from_reconstruction=exclude)
            assert core_main.get_recons_loss is original
            assert got.keys() == want.keys()
            for name in want:
                assert torch.equal(got[name], want[name]), name
    assert len(model.__dict__[rf._CACHE_ATTR]) == 2  # one entry per batch, shared by both SAEs
    # a different SAE really changes the SAE side: the cache does not freeze it
    other = rf.cached_recons_loss(_relu_sae(model, 3), model, batches[0], None, True, True)
    assert not torch.equal(other["kl_div_with_sae"], got["kl_div_with_sae"])


def test_cache_evicts_oldest_batches_beyond_its_byte_budget(tiny_hooked, monkeypatch):
    from eval.core import reference_forwards as rf

    model = tiny_hooked
    rf.clear(model)
    sae = _relu_sae(model, 1)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, model.cfg.d_vocab, (2, 16), generator=gen) for _ in range(3)]
    rf.cached_recons_loss(sae, model, batches[0], None, True, True)
    per_batch = next(iter(model.__dict__[rf._CACHE_ATTR].values())).nbytes
    monkeypatch.setattr(rf, "CACHE_BYTES", 2 * per_batch)
    for tokens in batches[1:]:
        rf.cached_recons_loss(sae, model, tokens, None, True, True)
    cache = model.__dict__[rf._CACHE_ATTR]
    assert len(cache) == 2
    assert [k[2] for k in cache] == [rf._reference_key("blocks.1.hook_resid_post", t)[2] for t in batches[1:]]
    rf.clear(model)
