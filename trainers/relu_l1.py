"""ReLU SAE with an L1 penalty on activations times decoder norms (Anthropic, April 2024);
dead latents are resampled by trainers.resampling."""
from __future__ import annotations

import torch

from trainers.sae import SparseAutoencoder, StepOutput


class ReluL1SAE(SparseAutoencoder):
    architecture = "relu"

    def __init__(self, d_in: int, d_sae: int, *, l1_coeff: float, generator: torch.Generator | None = None):
        super().__init__(d_in, d_sae, None, generator)
        self.l1_coeff = l1_coeff

    @torch.no_grad()
    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        return self.pre_acts(x_BD).relu()

    def training_step(self, x_BD: torch.Tensor, dead_M: torch.Tensor) -> StepOutput:
        acts_BM = self.pre_acts(x_BD).relu()
        recon_BD = self.decode(acts_BM)
        mse = (recon_BD - x_BD).pow(2).sum(1).mean()
        l1 = self.l1_coeff * (acts_BM * self.W_dec.norm(dim=1)).sum(1).mean()
        return StepOutput(mse + l1, mse, l1, recon_BD, None, acts_BM)
