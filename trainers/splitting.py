"""FC-guided splitting: latents that fire often on inconsistent inputs are split in two.

Candidates have absorption score s_i > mean(s) + z std(s) (highest first, at most a fraction of
the dictionary per event). For each, the recent inputs that activate it are clustered into two
direction patterns (spherical 2-means seeded by the sign of the first principal direction); the
candidate keeps the pattern nearest its current decoder direction and a slot latent (dead first,
then least frequent) takes the other. Norms follow the living latents; moments and tracker state
of touched latents are cleared (trainers.surgery).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from trainers.sae import SparseAutoencoder
from trainers.surgery import RESAMPLED_ENCODER_SCALE, mean_encoder_norm, reinit_latents
from trainers.tracker import FrequencyConsistencyTracker

SPLIT_COLUMNS = ["step", "latent", "slot", "score", "frequency", "consistency", "cosine"]


class SplitResult(NamedTuple):
    rows: list[dict]
    """One log row per split (SPLIT_COLUMNS)."""
    touched_ids: torch.Tensor
    """Every latent whose weights changed (candidates and slots)."""


def select_candidates(score_M: torch.Tensor, z: float, max_count: int) -> torch.Tensor:
    threshold = score_M.mean() + z * score_M.std()
    above_C = torch.nonzero(score_M > threshold).squeeze(1)
    order = score_M[above_C].argsort(descending=True, stable=True)
    return above_C[order][:max_count]


def select_slots(frequency_M: torch.Tensor, n: int, exclude: torch.Tensor) -> torch.Tensor:
    """The n least frequent latents outside ``exclude``: dead ones come first by construction."""
    freq_M = frequency_M.clone()
    freq_M[exclude] = float("inf")
    n = min(n, int(torch.isfinite(freq_M).sum()))
    return freq_M.argsort(stable=True)[:n]


def first_principal_direction(centred_ND: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Power iteration on C^T C without forming it: O(iters * N * D), versus a full SVD."""
    gen = torch.Generator().manual_seed(0)
    v_D = torch.randn(centred_ND.shape[1], generator=gen).to(centred_ND)
    for _ in range(iters):
        v_D = centred_ND.T @ (centred_ND @ v_D)
        v_D = v_D / v_D.norm().clamp_min(1e-30)
    return v_D


def two_direction_patterns(u_ND: torch.Tensor, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Spherical 2-means on unit rows; returns the two unit centroids and labels, or None when
    the rows do not form two non-empty groups."""
    centred_ND = u_ND - u_ND.mean(0)
    labels_N = (centred_ND @ first_principal_direction(centred_ND)) > 0
    for _ in range(iters):
        if labels_N.all() or not labels_N.any():
            return None
        c1_D = u_ND[labels_N].mean(0)
        c2_D = u_ND[~labels_N].mean(0)
        c1_D, c2_D = c1_D / c1_D.norm().clamp_min(1e-12), c2_D / c2_D.norm().clamp_min(1e-12)
        new_labels_N = (u_ND @ c1_D) >= (u_ND @ c2_D)
        if torch.equal(new_labels_N, labels_N):
            break
        labels_N = new_labels_N
    if labels_N.all() or not labels_N.any():
        return None
    return c1_D, c2_D, labels_N


@torch.no_grad()
def active_rows_of(model: SparseAutoencoder, inputs_RD: torch.Tensor, latent_ids_C: torch.Tensor,
                   tau_act: float, chunk: int = 4096) -> torch.Tensor:
    """(R, C) mask: which inputs activate each latent, using the model's own encoding."""
    parts = [model.encode(inputs_RD[i:i + chunk])[:, latent_ids_C].abs() > tau_act
             for i in range(0, inputs_RD.shape[0], chunk)]
    return torch.cat(parts)


@torch.no_grad()
def fc_split(model: SparseAutoencoder, optimizer: torch.optim.Optimizer, tracker: FrequencyConsistencyTracker,
             reservoir_RD: torch.Tensor, center_D: torch.Tensor, *, step: int, z: float, max_split_frac: float,
             dead_freq: float, min_rows: int, protected_M: torch.Tensor | None = None) -> SplitResult:
    """One split event. ``protected_M`` marks latents split so recently that their tracker
    statistics have not recovered; they are neither candidates nor slots."""
    score_M, freq_M, cons_M = tracker.absorption_score, tracker.frequency, tracker.consistency
    if protected_M is not None:
        score_M = torch.where(protected_M.to(score_M.device), torch.zeros_like(score_M), score_M)
    empty = SplitResult([], torch.empty(0, dtype=torch.long))
    cands_C = select_candidates(score_M, z, max(1, int(max_split_frac * model.d_sae)))
    if cands_C.numel() == 0:
        return empty
    active_RC = active_rows_of(model, reservoir_RD, cands_C.to(reservoir_RD.device), tracker.tau_act)
    kept, keep_dirs, other_dirs, cosines = [], [], [], []
    for j, latent in enumerate(cands_C.tolist()):
        rows_ND = reservoir_RD[active_RC[:, j]]
        if rows_ND.shape[0] < min_rows:
            continue
        centred_ND = rows_ND - center_D
        u_ND = centred_ND / centred_ND.norm(dim=1, keepdim=True).clamp_min(1e-12)
        found = two_direction_patterns(u_ND)
        if found is None:
            continue
        c1_D, c2_D, _ = found
        current_D = model.W_dec.data[latent]
        keep_D, other_D = (c1_D, c2_D) if float(current_D @ c1_D) >= float(current_D @ c2_D) else (c2_D, c1_D)
        kept.append(latent)
        keep_dirs.append(keep_D)
        other_dirs.append(other_D)
        cosines.append(float(keep_D @ other_D))
    if not kept:
        return empty
    kept_L = torch.tensor(kept, dtype=torch.long)
    exclude = kept_L if protected_M is None else torch.cat([kept_L, torch.nonzero(protected_M.cpu()).squeeze(1)])
    slots_L = select_slots(freq_M.cpu(), len(kept), exclude)
    if len(slots_L) < len(kept):  # fewer free latents than candidates: split the best ones only
        kept, keep_dirs, other_dirs, cosines = (v[:len(slots_L)] for v in (kept, keep_dirs, other_dirs, cosines))
        kept_L = kept_L[:len(slots_L)]
        if not kept:
            return empty
    # As in dead-latent resampling: new encoders start small (0.2 x the living norm) so the new
    # latents do not win the TopK of every input at once and wreck the reconstruction.
    enc_norm = RESAMPLED_ENCODER_SCALE * mean_encoder_norm(model, freq_M > dead_freq)
    ids_L = torch.cat([kept_L, slots_L])
    dirs_LD = torch.stack(keep_dirs + other_dirs)
    b_enc_L = torch.cat([model.b_enc.data[kept_L.to(model.b_enc.device)].cpu(), torch.zeros(len(kept))])
    reinit_latents(model, optimizer, tracker, ids_L, dirs_LD, torch.full((len(ids_L),), enc_norm), b_enc_L)
    rows = [{"step": step, "latent": lat, "slot": int(slot), "score": float(score_M[lat]),
             "frequency": float(freq_M[lat]), "consistency": float(cons_M[lat]), "cosine": cos}
            for lat, slot, cos in zip(kept, slots_L.tolist(), cosines)]
    return SplitResult(rows, ids_L)
