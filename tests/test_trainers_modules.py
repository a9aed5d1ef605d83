"""SAE building blocks: the sparse decoder's gradients, BatchTopK / Matryoshka losses, LR schedule."""
from __future__ import annotations

import pytest
import torch

import trainers.saes.sae as sae_mod
from trainers.saes.batchtopk import BatchTopKSAE, batch_topk_codes
from trainers.saes.matryoshka import MatryoshkaBatchTopKSAE
from trainers.saes.sae import row_topk_codes, sparse_decode
from trainers.saes.topk import TopKSAE
from trainers.training.config import TrainConfig, TrainConfigError
from trainers.training.loop import lr_at


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


def test_centred_topk_encode_gives_the_folded_bias_gradients_with_auxk():
    """train.precision bf16's centred encoder (b_dec subtracted from the input, gradients taken in
    its own backward) is the same function as the folded bias: in float64 loss and every gradient,
    AuxK's included, agree."""
    results = []
    for centred in (False, True):
        model = TopKSAE(8, 32, k=4, auxk_alpha=0.5, auxk_k=3, centred_encode=centred,
                        generator=torch.Generator().manual_seed(9)).double()
        with torch.no_grad():
            model.b_dec.normal_(generator=torch.Generator().manual_seed(10))
            model.b_enc.normal_(generator=torch.Generator().manual_seed(11))
        dead = torch.zeros(32, dtype=torch.bool)
        dead[::3] = True
        out = model.training_step(torch.randn(16, 8, generator=torch.Generator().manual_seed(12),
                                              dtype=torch.float64), dead)
        out.loss.backward()
        assert float(out.aux_loss.detach()) > 0
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0])
    for name, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], g, msg=name)


@pytest.mark.parametrize("centred", [False, True])
def test_topk_step_gradients_match_a_dense_reference(centred):
    gen = torch.Generator().manual_seed(1)
    model = TopKSAE(8, 32, k=4, auxk_alpha=0.0, centred_encode=centred, generator=gen)
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


def test_batch_topk_candidate_search_takes_the_same_entries():
    """Each row offering its top candidates gives the full search's codes (no ties in random data),
    also when one row holds more of the batch's largest entries than it offers (the fallback)."""
    gen = torch.Generator().manual_seed(8)
    post = torch.randn(64, 200, generator=gen).relu()
    skewed = post.clone()
    skewed[5] += 10.0  # row 5 holds 200 of the batch's 256 largest entries
    for case in (post, skewed):
        full = batch_topk_codes(case, 4)
        for candidates in (16, 40):
            fast = batch_topk_codes(case, 4, candidates)
            for a, b in zip(fast, full):
                assert torch.equal(a, b)


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


def test_matryoshka_shared_prefix_gradients_equal_the_per_prefix_ones():
    """train.precision bf16 takes every prefix's gradient in one product against suffix sums of the
    prefix gradients; in float64 (no bf16 products) loss and gradients equal the per-prefix path's."""
    gen = torch.Generator().manual_seed(4)
    grads = []
    for shared in (False, True):
        model = MatryoshkaBatchTopKSAE(8, 40, k=5, group_fractions=[0.125, 0.125, 0.25, 0.5], auxk_alpha=0.0,
                                       shared_prefix_grads=shared, generator=torch.Generator().manual_seed(5)).double()
        x = torch.randn(24, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        out = model.training_step(x, torch.zeros(40, dtype=torch.bool))
        out.loss.backward()
        grads.append((out.loss.detach(), out.recon_BD.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, recon_a, grad_a), (loss_b, recon_b, grad_b) = grads
    torch.testing.assert_close(loss_b, loss_a)
    torch.testing.assert_close(recon_b, recon_a)
    for name, g in grad_a.items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(grad_b[name], g, msg=name)


def test_bf16_precision_setting_runs_the_products_in_bf16_and_keeps_the_run_reproducible(tmp_path):
    """train.precision bf16: autocast on CPU, fused Adam, float32 weights; two runs agree bit for bit
    and differ from the float32 setting's run."""
    from trainers.training.data import InMemoryActivations
    from trainers.training.export import ModelInfo
    from trainers.training.loop import train_sae
    from safetensors.torch import load_file

    acts = torch.randn(4096, 16, generator=torch.Generator().manual_seed(7))
    info = ModelInfo("synthetic")
    weights = {}
    for label, precision in (("bf16a", "bf16"), ("bf16b", "bf16"), ("fp32", "float32")):
        cfg = TrainConfig(trainers=["matryoshka"], d_sae=64, k=4, n_tokens=4096 * 2, batch_size=256, precision=precision,
                          checkpoint_every=0, options={"matryoshka": {"group_fractions": [0.25, 0.75]}})
        out = tmp_path / label
        train_sae(InMemoryActivations(acts), cfg, "matryoshka", 0, out, info, progress=False)
        weights[label] = load_file(str(out / "sae_weights.safetensors"))
    for name, w in weights["bf16a"].items():
        assert w.dtype == torch.float32 and torch.equal(w, weights["bf16b"][name]), name
    assert not torch.equal(weights["bf16a"]["W_enc"], weights["fp32"]["W_enc"])
    with pytest.raises(TrainConfigError, match="train.precision must be float32 or bf16"):
        TrainConfig(precision="fp16")


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


@pytest.mark.parametrize("trainer,precision", [("topk", "float32"), ("batchtopk", "float32"), ("matryoshka", "float32"),
                                               ("relu_l1", "float32"), ("topk", "bf16"), ("matryoshka", "bf16")])
def test_training_step_under_bf16_autocast_gives_finite_fp32_gradients(trainer, precision):
    """The loop uses bf16 autocast on GPU (and on CPU with train.precision bf16); the custom backward
    passes must cope with bf16 values."""
    from trainers.training.registry import build_sae

    model = build_sae(trainer, TrainConfig(d_sae=64, k=4, precision=precision,
                                           options={"matryoshka": {"group_fractions": [0.5, 0.5]}}), 16,
                      torch.Generator().manual_seed(0))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:5] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.training_step(torch.randn(32, 16, generator=torch.Generator().manual_seed(1)), dead)
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and bool(torch.isfinite(p.grad).all()), name
