"""Matryoshka BatchTopK SAE: nested prefixes of the dictionary must each reconstruct the input,
which pushes general features into early latents and reduces absorption (Bussmann et al. 2025)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fc_base.errors import check
from trainers.batchtopk import BatchTopKOptions, BatchTopKSAE
from fc_base.options import Options
from trainers.recipe import Recipe, register
from trainers.sae import SparseCodes, sparse_decode
from trainers.topk import AuxKOptions


@dataclass
class MatryoshkaOptions(Options):
    section = "matryoshka"
    group_fractions: list[float] = field(default_factory=lambda: [0.0625, 0.0625, 0.125, 0.25, 0.5])
    """Group sizes as fractions of d_sae (must sum to 1); each prefix of groups reconstructs."""

    def __post_init__(self) -> None:
        f = self.group_fractions
        check(isinstance(f, list) and len(f) > 0 and all(x > 0 for x in f) and abs(sum(f) - 1.0) < 1e-6,
              f"train.options.matryoshka.group_fractions must be positive and sum to 1, got {f}")


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    def __init__(self, d_in: int, d_sae: int, k: int, *, group_fractions: list[float], **kwargs):
        super().__init__(d_in, d_sae, k, **kwargs)
        sizes = [int(round(f * d_sae)) for f in group_fractions]
        sizes[-1] = d_sae - sum(sizes[:-1])
        if any(s <= 0 for s in sizes):
            raise ValueError(f"matryoshka groups {sizes} must all be non-empty for d_sae={d_sae}")
        self.group_ends = torch.tensor(sizes).cumsum(0).tolist()

    def reconstruction_loss(self, codes: SparseCodes, x_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x_BD.shape[0]
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
                                  auxk_alpha=aux.alpha, auxk_k=aux.k,
                                  threshold_beta=cfg.option(BatchTopKOptions).threshold_beta, generator=generator)


MATRYOSHKA = register(Recipe("matryoshka", "Matryoshka-BatchTopK SAE (nested prefixes each reconstruct)",
                             build_matryoshka, options=(AuxKOptions, BatchTopKOptions, MatryoshkaOptions)))
