"""FC-guided splitting: latents that fire often on inconsistent inputs are split in two.

Candidates have absorption score s_i > mean(s) + z std(s), the mean and std taken over the
latents not recently touched (highest first, at most a fraction of the dictionary per event). For
each, the recent inputs that activate it are clustered into two direction patterns (spherical
2-means seeded by the sign of the first principal direction); the candidate keeps the pattern nearest
its current decoder direction, with its own encoder norm and bias (so it keeps firing about as
often), and a dead slot latent (frequency below ``dead_freq``) takes the other at 0.2x the living
encoder norm and zero bias. Without dead slots fewer latents are split: a living latent is never
overwritten. Moments and tracker state of touched latents are cleared (trainers.surgery).

``choose`` replaces the statistic: the random-surgery control picks as many candidates as the score
rule would, uniformly among the eligible latents, and runs the same surgery.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from trainers.sae import SparseAutoencoder
from trainers.surgery import RESAMPLED_ENCODER_SCALE, mean_encoder_norm, reinit_latents
from trainers.tracker import FrequencyConsistencyTracker

SPLIT_COLUMNS = ["step", "latent", "slot", "score", "frequency", "consistency", "cosine", "slot_frequency",
                 "slot_dead"]


class SplitResult(NamedTuple):
    rows: list[dict]
    """One log row per split (SPLIT_COLUMNS)."""
    touched_ids: torch.Tensor
    """Every latent whose weights changed (candidates and slots)."""


def select_candidates(score_M: torch.Tensor, z: float, max_count: int,
                      eligible_M: torch.Tensor | None = None) -> torch.Tensor:
    """Eligible latents with score above mean + z std of the eligible scores, highest first."""
    eligible_M = torch.ones_like(score_M, dtype=torch.bool) if eligible_M is None else eligible_M.to(score_M.device)
    pool = score_M[eligible_M]
    if pool.numel() < 2:
        return torch.empty(0, dtype=torch.long, device=score_M.device)
    above_C = torch.nonzero((score_M > pool.mean() + z * pool.std()) & eligible_M).squeeze(1)
    order = score_M[above_C].argsort(descending=True, stable=True)
    return above_C[order][:max_count]


def select_random_candidates(score_M: torch.Tensor, z: float, max_count: int, eligible_M: torch.Tensor,
                             generator: torch.Generator) -> torch.Tensor:
    """As many candidates as :func:`select_candidates` would pick, uniformly among the eligible."""
    n = select_candidates(score_M, z, max_count, eligible_M).numel()
    pool_C = torch.nonzero(eligible_M.cpu()).squeeze(1)
    return pool_C[torch.randperm(pool_C.numel(), generator=generator)[:n]].to(score_M.device)


def select_slots(frequency_M: torch.Tensor, n: int, exclude: torch.Tensor,
                 dead_freq: float | None = None) -> torch.Tensor:
    """The n least frequent latents outside ``exclude`` (and, with ``dead_freq``, only those firing
    less often than it)."""
    freq_M = frequency_M.clone()
    freq_M[exclude] = float("inf")
    if dead_freq is not None:
        freq_M[freq_M >= dead_freq] = float("inf")
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
             dead_freq: float, min_rows: int, protected_M: torch.Tensor | None = None,
             random_generator: torch.Generator | None = None, max_freq: float = 1.0) -> SplitResult:
    """One split event. ``protected_M`` marks latents touched so recently that their tracker
    statistics have not recovered; they are neither candidates, nor slots, nor part of the mean and
    std that set the threshold. Latents firing more often than ``max_freq`` are not eligible either.
    ``random_generator``: the random-surgery control (candidates drawn uniformly, same count)."""
    score_M, freq_M, cons_M = tracker.absorption_score, tracker.frequency, tracker.consistency
    eligible_M = freq_M <= max_freq
    if protected_M is not None:
        eligible_M &= ~protected_M.to(score_M.device)
    empty = SplitResult([], torch.empty(0, dtype=torch.long))
    max_count = max(1, int(max_split_frac * model.d_sae))
    if random_generator is None:
        cands_C = select_candidates(score_M, z, max_count, eligible_M)
    else:
        cands_C = select_random_candidates(score_M, z, max_count, eligible_M & (freq_M > dead_freq), random_generator)
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
    slots_L = select_slots(freq_M.cpu(), len(kept), exclude, dead_freq)
    if len(slots_L) < len(kept):  # fewer dead latents than candidates: split the best ones only
        kept, keep_dirs, other_dirs, cosines = (v[:len(slots_L)] for v in (kept, keep_dirs, other_dirs, cosines))
        kept_L = kept_L[:len(slots_L)]
        if not kept:
            return empty
    # The kept half keeps its own encoder norm and bias, so it fires about as often as before. The
    # new half starts small, as in dead-latent resampling (0.2 x the living norm), so it does not win
    # the TopK of every input at once and wreck the reconstruction.
    kept_dev = kept_L.to(model.W_enc.device)
    kept_norms_L = model.W_enc.data[:, kept_dev].norm(dim=0).cpu()
    slot_norm = RESAMPLED_ENCODER_SCALE * mean_encoder_norm(model, freq_M > dead_freq)
    ids_L = torch.cat([kept_L, slots_L])
    dirs_LD = torch.stack(keep_dirs + other_dirs)
    enc_norms_L = torch.cat([kept_norms_L, torch.full((len(kept),), slot_norm)])
    b_enc_L = torch.cat([model.b_enc.data[kept_dev].cpu(), torch.zeros(len(kept))])
    slot_freq = freq_M.cpu()[slots_L].tolist()
    reinit_latents(model, optimizer, tracker, ids_L, dirs_LD, enc_norms_L, b_enc_L)
    rows = [{"step": step, "latent": lat, "slot": int(slot), "score": float(score_M[lat]),
             "frequency": float(freq_M[lat]), "consistency": float(cons_M[lat]), "cosine": cos,
             "slot_frequency": sf, "slot_dead": sf < dead_freq}
            for lat, slot, cos, sf in zip(kept, slots_L.tolist(), cosines, slot_freq)]
    return SplitResult(rows, ids_L)
