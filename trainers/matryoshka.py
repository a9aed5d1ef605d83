"""Matryoshka BatchTopK SAE: nested prefixes of the dictionary must each reconstruct the input,
which pushes general features into early latents and reduces absorption (Bussmann et al. 2025)."""
from __future__ import annotations

import torch

from trainers.batchtopk import BatchTopKSAE
from trainers.sae import SparseCodes, sparse_decode


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
