"""TopK SAE with the AuxK loss for dead latents (the baseline, and the base of FC-TopK)."""
from __future__ import annotations

import torch

from trainers.sae import SparseAutoencoder, StepOutput, auxk_loss, row_topk_codes, sparse_decode


class TopKSAE(SparseAutoencoder):
    architecture = "topk"

    def __init__(self, d_in: int, d_sae: int, k: int, *, auxk_alpha: float = 1 / 32, auxk_k: int | None = None,
                 generator: torch.Generator | None = None):
        super().__init__(d_in, d_sae, k, generator)
        self.auxk_alpha = auxk_alpha
        self.auxk_k = auxk_k or max(1, d_in // 2)

    @torch.no_grad()
    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        post_BM = self.pre_acts(x_BD).relu()
        vals_BK, idx_BK = post_BM.topk(self.k, dim=1)
        return torch.zeros_like(post_BM).scatter_(1, idx_BK, vals_BK)

    def training_step(self, x_BD: torch.Tensor, dead_M: torch.Tensor) -> StepOutput:
        post_BM = self.pre_acts(x_BD).relu()
        codes = row_topk_codes(post_BM, self.k)
        recon_BD = sparse_decode(codes, self.W_dec, x_BD.shape[0]) + self.b_dec
        mse = (recon_BD - x_BD).pow(2).sum(1).mean()
        aux = self.auxk_alpha * auxk_loss(self, post_BM, x_BD, recon_BD, dead_M, self.auxk_k) \
            if self.auxk_alpha > 0 else mse.new_zeros(())
        return StepOutput(mse + aux, mse, aux, recon_BD, codes, None)
