"""Latent surgery, the tool of every maintenance hook (FC splitting and repair, dead-latent
resampling): overwrite some latents' encoder/decoder, and in the same breath clear the Adam moments
and tracker statistics that described the old latents (stale moments would push the new directions
straight back)."""
from __future__ import annotations

import torch

from trainers.fc.tracker import FrequencyConsistencyTracker
from trainers.saes.sae import SparseAutoencoder

RESAMPLED_ENCODER_SCALE = 0.2
"""New latents' encoder norm relative to the living latents' mean (Anthropic-style resampling)."""


@torch.no_grad()
def mean_encoder_norm(model: SparseAutoencoder, alive_M: torch.Tensor) -> float:
    norms_M = model.W_enc.data.norm(dim=0)
    return float(norms_M[alive_M].mean()) if bool(alive_M.any()) else float(norms_M.mean())


@torch.no_grad()
def set_latents(model: SparseAutoencoder, optimizer: torch.optim.Optimizer,
                tracker: FrequencyConsistencyTracker | None, latent_ids_L: torch.Tensor,
                directions_LD: torch.Tensor, enc_LD: torch.Tensor, b_enc_L: torch.Tensor) -> None:
    """Set decoder rows to ``directions_LD`` (unit rows), encoder columns to ``enc_LD`` and encoder
    biases to ``b_enc_L``; zero the moments of touched entries and reset their tracker statistics."""
    ids_L = latent_ids_L.to(model.W_dec.device)
    model.W_dec.data[ids_L] = directions_LD.to(model.W_dec)
    model.W_enc.data[:, ids_L] = enc_LD.to(model.W_enc).T
    model.b_enc.data[ids_L] = b_enc_L.to(model.b_enc)
    for param, index in ((model.W_dec, (ids_L,)), (model.W_enc, (slice(None), ids_L)), (model.b_enc, (ids_L,))):
        state = optimizer.state.get(param, {})
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in state:
                state[moment][index] = 0.0
    if tracker is not None:
        tracker.reset(ids_L)


@torch.no_grad()
def reinit_latents(model: SparseAutoencoder, optimizer: torch.optim.Optimizer,
                   tracker: FrequencyConsistencyTracker | None, latent_ids_L: torch.Tensor,
                   directions_LD: torch.Tensor, enc_norms_L: torch.Tensor, b_enc_L: torch.Tensor) -> None:
    """:func:`set_latents` with each encoder column along its decoder direction, scaled by
    ``enc_norms_L``."""
    dirs_LD = directions_LD.to(model.W_dec) / directions_LD.norm(dim=1, keepdim=True).clamp_min(1e-12).to(model.W_dec)
    set_latents(model, optimizer, tracker, latent_ids_L, dirs_LD, dirs_LD * enc_norms_L.to(dirs_LD)[:, None], b_enc_L)
