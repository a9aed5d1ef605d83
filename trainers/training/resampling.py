"""Anthropic-style dead-latent resampling for the ReLU + L1 trainer: dead latents restart on
inputs the SAE reconstructs badly (sampled with probability proportional to loss squared)."""
from __future__ import annotations

import torch

from trainers.fc.tracker import FrequencyConsistencyTracker
from trainers.saes.sae import SparseAutoencoder
from trainers.training.recipe import MaintenanceContext, MaintenanceResult
from trainers.training.surgery import RESAMPLED_ENCODER_SCALE, mean_encoder_norm, reinit_latents


@torch.no_grad()
def resample_dead(model: SparseAutoencoder, optimizer: torch.optim.Optimizer,
                  tracker: FrequencyConsistencyTracker | None, reservoir_RD: torch.Tensor,
                  dead_M: torch.Tensor, generator: torch.Generator, chunk: int = 4096) -> torch.Tensor:
    dead_L = torch.nonzero(dead_M).squeeze(1)
    if dead_L.numel() == 0:
        return dead_L
    losses = [(model.decode(model.encode(x_RD)) - x_RD).pow(2).sum(1)
              for x_RD in reservoir_RD.split(chunk)]
    weight_R = torch.cat(losses).pow(2).cpu().double()
    if not torch.isfinite(weight_R).all() or weight_R.sum() <= 0:
        weight_R = torch.ones_like(weight_R)
    picks_L = torch.multinomial(weight_R, dead_L.numel(), replacement=True, generator=generator)
    dirs_LD = reservoir_RD[picks_L.to(reservoir_RD.device)] - model.b_dec.data
    enc_norm = RESAMPLED_ENCODER_SCALE * mean_encoder_norm(model, ~dead_M)
    reinit_latents(model, optimizer, tracker, dead_L, dirs_LD,
                   torch.full((dead_L.numel(),), enc_norm), torch.zeros(dead_L.numel()))
    return dead_L


def resample_maintain(ctx: MaintenanceContext) -> MaintenanceResult:
    """The maintenance hook of resampling recipes: every dead latent restarts."""
    ids_L = resample_dead(ctx.model, ctx.optimizer, ctx.tracker, ctx.reservoir_RD, ctx.dead_M, ctx.generator)
    return MaintenanceResult(ids_L, n_resampled=int(ids_L.numel()))
