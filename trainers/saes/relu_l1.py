"""ReLU SAE with an L1 penalty on activations times decoder norms (Anthropic, April 2024);
dead latents are resampled by trainers.training.resampling."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fc_base.errors import check
from fc_base.options import Options
from trainers.saes.sae import SparseAutoencoder, StepOutput
from trainers.training.recipe import Recipe, register
from trainers.training.resampling import resample_maintain


@dataclass
class ReluL1Options(Options):
    section = "relu_l1"
    l1_coeff: float = 5.0
    """L1 sparsity weight (on activations times decoder norms); it sets the L0."""
    l0_target: int | None = None
    """The L0 that ``l1_coeff`` was calibrated to land near, recorded as the SAE's L0 target so that
    comparisons put it beside the TopK-family SAEs of that k (None: compared at no k)."""

    def __post_init__(self) -> None:
        check(self.l1_coeff >= 0, f"train.options.relu_l1.l1_coeff must be >= 0, got {self.l1_coeff}")
        check(self.l0_target is None or (isinstance(self.l0_target, int) and self.l0_target > 0),
              f"train.options.relu_l1.l0_target must be a positive int or null, got {self.l0_target!r}")


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


def build_relu_l1(d_in: int, cfg, generator: torch.Generator) -> ReluL1SAE:
    return ReluL1SAE(d_in, cfg.d_sae, l1_coeff=cfg.option(ReluL1Options).l1_coeff, generator=generator)


RELU_L1 = register(Recipe("relu_l1", "ReLU + L1 SAE with Anthropic-style dead-latent resampling", build_relu_l1,
                          options=(ReluL1Options,), maintain=resample_maintain, sparsity="penalty"))
