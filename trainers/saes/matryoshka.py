"""Matryoshka BatchTopK SAE: nested prefixes of the dictionary must each reconstruct the input,
which pushes general features into early latents and reduces absorption (Bussmann et al. 2025)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fc_base.errors import check
from fc_base.options import Options
from trainers.saes.batchtopk import BatchTopKOptions, BatchTopKSAE, candidate_count
from trainers.saes.sae import SparseCodes, cpu_bf16_enabled, latent_major_product, sparse_decode, value_grads
from trainers.saes.topk import AuxKOptions
from trainers.training.recipe import Recipe, register


@dataclass
class MatryoshkaOptions(Options):
    section = "matryoshka"
    group_fractions: list[float] = field(default_factory=lambda: [0.0625, 0.0625, 0.125, 0.25, 0.5])
    """Group sizes as fractions of d_sae (must sum to 1); each prefix of groups reconstructs."""

    def __post_init__(self) -> None:
        f = self.group_fractions
        check(isinstance(f, list) and len(f) > 0 and all(x > 0 for x in f) and abs(sum(f) - 1.0) < 1e-6,
              f"train.options.matryoshka.group_fractions must be positive and sum to 1, got {f}")


class _PrefixDecode(torch.autograd.Function):
    """The decodes of every prefix of latent groups at once: out[g] = sum of value * W_dec[latent]
    over the entries whose latent lies in groups 0..g (no decoder bias). An entry of group g
    reaches the prefixes g..G-1, so its gradient is taken against the suffix sum of their
    gradients: one dense B x M x D product per step in all, instead of one per prefix."""

    @staticmethod
    def forward(ctx, rows_N, latents_N, values_N, W_dec_MD, batch_size: int, group_ends: list[int]):
        group_N = torch.bucketize(latents_N, torch.tensor(group_ends, device=latents_N.device), right=True)
        members = [torch.nonzero(group_N == g).squeeze(1) for g in range(len(group_ends))]  # rows stay ascending
        rows_B = torch.arange(batch_size, device=rows_N.device)
        parts = [F.embedding_bag(latents_N[sel], W_dec_MD, torch.searchsorted(rows_N[sel], rows_B), mode="sum",
                                 per_sample_weights=values_N[sel]) for sel in members]
        ctx.save_for_backward(rows_N, latents_N, values_N, W_dec_MD, *members)
        ctx.batch_size, ctx.group_ends, ctx.bf16_grad = batch_size, group_ends, cpu_bf16_enabled(W_dec_MD)
        return torch.stack(parts).cumsum(0)

    @staticmethod
    def backward(ctx, grad_GBD):
        rows_N, latents_N, values_N, W_dec_MD, *members = ctx.saved_tensors
        suffix_GBD = grad_GBD.flip(0).cumsum(0).flip(0).to(W_dec_MD.dtype)
        grad_values = torch.zeros_like(values_N) if ctx.needs_input_grad[2] else None
        grad_W = torch.zeros_like(W_dec_MD) if ctx.needs_input_grad[3] else None
        start = 0
        for g, (sel, end) in enumerate(zip(members, ctx.group_ends)):
            rows, local = rows_N[sel], latents_N[sel] - start
            if grad_values is not None:
                grad_values[sel] = value_grads(suffix_GBD[g], W_dec_MD[start:end], rows, local,
                                                ctx.bf16_grad).to(values_N.dtype)
            if grad_W is not None and sel.numel():
                grad_W[start:end] = latent_major_product(local, rows, values_N[sel].detach(), end - start,
                                                         suffix_GBD[g])
            start = end
        return None, None, grad_values, grad_W, None, None


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    def __init__(self, d_in: int, d_sae: int, k: int, *, group_fractions: list[float],
                 shared_prefix_grads: bool = False, **kwargs):
        super().__init__(d_in, d_sae, k, **kwargs)
        sizes = [int(round(f * d_sae)) for f in group_fractions]
        sizes[-1] = d_sae - sum(sizes[:-1])
        if any(s <= 0 for s in sizes):
            raise ValueError(f"matryoshka groups {sizes} must all be non-empty for d_sae={d_sae}")
        self.group_ends = torch.tensor(sizes).cumsum(0).tolist()
        # train.precision bf16: all prefixes in one _PrefixDecode (same loss, different float sums).
        self.shared_prefix_grads = shared_prefix_grads

    def reconstruction_loss(self, codes: SparseCodes, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x_BD.shape[0]
        if self.shared_prefix_grads:
            prefix_GBD = _PrefixDecode.apply(codes.rows_N, codes.latents_N, codes.values_N.to(self.W_dec.dtype),
                                             self.W_dec, b, self.group_ends) + self.b_dec
            return (prefix_GBD - x_BD).pow(2).sum(2).mean(1).mean(), prefix_GBD[-1]
        group_G = torch.bucketize(codes.latents_N, torch.tensor(self.group_ends, device=x_BD.device), right=True)
        recon_BD = self.b_dec.expand_as(x_BD)
        losses = []
        for g in range(len(self.group_ends)):
            in_group = (group_G == g).to(codes.values_N.dtype)
            part = codes._replace(values_N=codes.values_N * in_group)
            recon_BD = recon_BD + sparse_decode(part, self.W_dec, b)
            losses.append((recon_BD - x_BD).pow(2).sum(1).mean())
        return torch.stack(losses).mean(), recon_BD


def build_matryoshka(d_in: int, cfg, generator: torch.Generator) -> MatryoshkaBatchTopKSAE:
    aux = cfg.option(AuxKOptions)
    return MatryoshkaBatchTopKSAE(d_in, cfg.d_sae, cfg.k, group_fractions=cfg.option(MatryoshkaOptions).group_fractions,
                                  shared_prefix_grads=cfg.precision == "bf16", candidates=candidate_count(cfg),
                                  auxk_alpha=aux.alpha, auxk_k=aux.k,
                                  threshold_beta=cfg.option(BatchTopKOptions).threshold_beta, generator=generator)


MATRYOSHKA = register(Recipe("matryoshka", "Matryoshka-BatchTopK SAE (nested prefixes each reconstruct)",
                             build_matryoshka, options=(AuxKOptions, BatchTopKOptions, MatryoshkaOptions)))
