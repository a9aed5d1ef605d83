"""SAE building blocks: the sparse decoder's gradients, BatchTopK / Matryoshka losses, LR schedule."""
from __future__ import annotations

import pytest
import torch

import trainers.sae as sae_mod
from trainers.batchtopk import BatchTopKSAE, batch_topk_codes
from trainers.config import TrainConfig, TrainConfigError
from trainers.loop import lr_at
from trainers.matryoshka import MatryoshkaBatchTopKSAE
from trainers.sae import row_topk_codes, sparse_decode
from trainers.topk import TopKSAE


@pytest.mark.parametrize("dense_ratio", [0, 10_000])
def test_sparse_decode_matches_dense_autograd(monkeypatch, dense_ratio):
    """Both gradient strategies (gathered rows / one matmul) agree with plain autograd."""
    monkeypatch.setattr(sae_mod, "_DENSE_GRAD_MAX_RATIO", dense_ratio)
    gen = torch.Generator().manual_seed(0)
    post = torch.randn(6, 20, generator=gen, dtype=torch.float64).relu()
    W = torch.randn(20, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    codes = row_topk_codes(post, 3)
    values = codes.values_N.clone().requires_grad_(True)
    out = sparse_decode(codes._replace(values_N=values), W, 6)
    dense = torch.zeros(6, 20, dtype=torch.float64).index_put((codes.rows_N, codes.latents_N), values)
    torch.testing.assert_close(out, dense @ W)
    g = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    gv, gw = torch.autograd.grad((out * g).sum(), (values, W))
    gv_ref, gw_ref = torch.autograd.grad(((dense @ W) * g).sum(), (values, W))
    torch.testing.assert_close(gv, gv_ref)
    torch.testing.assert_close(gw, gw_ref)


def test_topk_step_gradients_match_a_dense_reference():
    gen = torch.Generator().manual_seed(1)
    model = TopKSAE(8, 32, k=4, auxk_alpha=0.0, generator=gen)
    x = torch.randn(16, 8, generator=gen)
    out = model.training_step(x, torch.zeros(32, dtype=torch.bool))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    pre = (x - model.b_dec) @ model.W_enc + model.b_enc
    vals, idx = pre.relu().topk(4, dim=1)
    acts = torch.zeros_like(pre).scatter(1, idx, vals)
    ((acts @ model.W_dec + model.b_dec - x).pow(2).sum(1).mean()).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)


def test_batch_topk_keeps_k_per_row_on_average_and_learns_a_threshold():
    gen = torch.Generator().manual_seed(2)
    post = torch.randn(10, 50, generator=gen).relu()
    codes = batch_topk_codes(post, 3)
    assert codes.rows_N.numel() == 30 and bool((codes.rows_N[1:] >= codes.rows_N[:-1]).all())
    torch.testing.assert_close(post[codes.rows_N, codes.latents_N], codes.values_N)
    assert codes.values_N.min() >= post.flatten().topk(30).values.min()
    model = BatchTopKSAE(8, 32, k=4, generator=gen)
    out = model.training_step(torch.randn(16, 8, generator=gen), torch.zeros(32, dtype=torch.bool))
    model.after_step(out)
    positive = out.sparse.values_N.detach()
    assert float(model.threshold) == pytest.approx(float(positive[positive > 0].min()))


def test_matryoshka_loss_is_the_mean_of_prefix_reconstructions():
    gen = torch.Generator().manual_seed(3)
    model = MatryoshkaBatchTopKSAE(8, 32, k=4, group_fractions=[0.25, 0.25, 0.5], auxk_alpha=0.0, generator=gen)
    x = torch.randn(16, 8, generator=gen)
    out = model.training_step(x, torch.zeros(32, dtype=torch.bool))
    acts = torch.zeros(16, 32).index_put((out.sparse.rows_N, out.sparse.latents_N), out.sparse.values_N.detach())
    losses = []
    for end in (8, 16, 32):
        recon = acts[:, :end] @ model.W_dec[:end] + model.b_dec
        losses.append((recon - x).pow(2).sum(1).mean())
    torch.testing.assert_close(out.loss.detach(), torch.stack(losses).mean().detach(), rtol=1e-5, atol=1e-5)


def test_lr_schedule_and_config_validation():
    cfg = TrainConfig(n_tokens=100 * 1024, batch_size=1024, lr=1.0, warmup_frac=0.1, decay_start_frac=0.8)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(50, 100, cfg) == 1.0
    assert lr_at(90, 100, cfg) == pytest.approx(0.5)
    assert lr_at(99, 100, cfg) == pytest.approx(0.05)
    with pytest.raises(TrainConfigError, match="train.trainers: unknown trainer 'gated'"):
        TrainConfig(trainers=["gated"])
    with pytest.raises(TrainConfigError, match="group_fractions"):
        TrainConfig(options={"matryoshka": {"group_fractions": [0.5, 0.4]}})
    for name in ("demo", "pythia70m", "tiny"):
        assert TrainConfig.preset(name).total_steps > 0


@pytest.mark.parametrize("trainer", ["topk", "batchtopk", "matryoshka", "relu_l1"])
def test_training_step_under_bf16_autocast_gives_finite_fp32_gradients(trainer):
    """The loop uses bf16 autocast on GPU; the custom backward passes must cope with bf16 values."""
    from trainers.registry import build_sae

    model = build_sae(trainer, TrainConfig(d_sae=64, k=4, options={"matryoshka": {"group_fractions": [0.5, 0.5]}}), 16,
                      torch.Generator().manual_seed(0))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:5] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.training_step(torch.randn(32, 16, generator=torch.Generator().manual_seed(1)), dead)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and bool(torch.isfinite(p.grad).all()), name
