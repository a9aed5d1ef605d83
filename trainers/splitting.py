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


@torch.no_grad()
def two_direction_patterns(u_ND: torch.Tensor, group_N: torch.Tensor, n_groups: int, iters: int = 10,
                           power_iters: int = 30) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spherical 2-means on the unit rows of each group (``group_N``: each row's group), all groups at
    once. Each group's labels start from the sign of its first principal direction (power iteration
    from one fixed random vector); a group stops when its labels stop changing and fails when one side
    empties. Everything is a segment sum over all rows, so a split event costs a few dozen kernels
    instead of a Python loop over candidates. Returns the two unit centroids (n_groups, D) and which
    groups found two patterns."""
    d = u_ND.shape[1]
    dtype, device = u_ND.dtype, u_ND.device

    def group_sum(values_N: torch.Tensor) -> torch.Tensor:
        return torch.zeros((n_groups, *values_N.shape[1:]), dtype=dtype, device=device).index_add_(0, group_N, values_N)

    count_G = group_sum(torch.ones_like(u_ND[:, 0]))
    centred_ND = u_ND - (group_sum(u_ND) / count_G.clamp_min(1)[:, None])[group_N]
    gen = torch.Generator().manual_seed(0)
    v_GD = torch.randn(d, generator=gen).to(u_ND).expand(n_groups, d).contiguous()
    for _ in range(power_iters):
        v_GD = group_sum(centred_ND * (centred_ND * v_GD[group_N]).sum(1, keepdim=True))
        v_GD = v_GD / v_GD.norm(dim=1, keepdim=True).clamp_min(1e-30)
    labels_N = (centred_ND * v_GD[group_N]).sum(1) > 0

    def one_sided(labels: torch.Tensor) -> torch.Tensor:
        n1_G = group_sum(labels.to(dtype))
        return (n1_G == 0) | (n1_G == count_G)

    ok_G = torch.ones(n_groups, dtype=torch.bool, device=device)
    running_G = ok_G.clone()
    c1_GD = torch.zeros(n_groups, d, dtype=dtype, device=device)
    c2_GD = torch.zeros_like(c1_GD)
    for _ in range(iters):
        failed_G = running_G & one_sided(labels_N)
        ok_G &= ~failed_G
        running_G &= ~failed_G
        if not running_G.any():
            break
        lab_N1 = labels_N[:, None].to(dtype)
        new1_GD, new2_GD = group_sum(u_ND * lab_N1), group_sum(u_ND * (1 - lab_N1))
        new1_GD = new1_GD / new1_GD.norm(dim=1, keepdim=True).clamp_min(1e-12)
        new2_GD = new2_GD / new2_GD.norm(dim=1, keepdim=True).clamp_min(1e-12)
        c1_GD = torch.where(running_G[:, None], new1_GD, c1_GD)
        c2_GD = torch.where(running_G[:, None], new2_GD, c2_GD)
        new_labels_N = (u_ND * c1_GD[group_N]).sum(1) >= (u_ND * c2_GD[group_N]).sum(1)
        moved_N = (new_labels_N != labels_N) & running_G[group_N]
        labels_N = torch.where(moved_N, new_labels_N, labels_N)
        running_G &= group_sum(moved_N.to(dtype)) > 0
    ok_G &= ~one_sided(labels_N)
    return c1_GD, c2_GD, ok_G


@torch.no_grad()
def active_rows_of(model: SparseAutoencoder, inputs_RD: torch.Tensor, latent_ids_C: torch.Tensor,
                   tau_act: float, chunk: int = 4096) -> torch.Tensor:
    """(R, C) mask: which inputs activate each latent, using the model's own encoding."""
    parts = [model.encode(inputs_RD[i:i + chunk])[:, latent_ids_C].abs() > tau_act
             for i in range(0, inputs_RD.shape[0], chunk)]
    return torch.cat(parts)


_SPLIT_CHUNK_ELEMENTS = 1 << 26
"""Gathered (row, candidate) pairs x D per batched clustering call: bounds its memory (256 MiB)."""


def _split_directions(model: SparseAutoencoder, reservoir_RD: torch.Tensor, center_D: torch.Tensor,
                      cands_C: torch.Tensor, active_RC: torch.Tensor, min_rows: int):
    """For each candidate with at least ``min_rows`` activating rows and two direction patterns among
    them: (latent, kept direction, other direction, their cosine), in candidate order. The kept
    pattern is the one nearer the candidate's current decoder direction."""
    count_C = active_RC.sum(0).tolist()  # one transfer, then plain-int chunking
    cols = [j for j, n in enumerate(count_C) if n >= min_rows]
    kept, keep_dirs, other_dirs, cosines = [], [], [], []
    start, d = 0, reservoir_RD.shape[1]
    while start < len(cols):  # chunks of candidates whose gathered rows fit the memory bound
        stop, elements = start + 1, count_C[cols[start]] * d
        while stop < len(cols) and elements + count_C[cols[stop]] * d <= _SPLIT_CHUNK_ELEMENTS:
            elements += count_C[cols[stop]] * d
            stop += 1
        chunk = cols[start:stop]
        group_N, rows_N = torch.nonzero(active_RC[:, chunk].T, as_tuple=True)
        centred_ND = reservoir_RD[rows_N] - center_D
        u_ND = centred_ND / centred_ND.norm(dim=1, keepdim=True).clamp_min(1e-12)
        c1_GD, c2_GD, ok_G = two_direction_patterns(u_ND, group_N, len(chunk))
        latents_G = cands_C[chunk].to(model.W_dec.device)
        current_GD = model.W_dec.data[latents_G].to(u_ND)
        first_G = (current_GD * c1_GD).sum(1) >= (current_GD * c2_GD).sum(1)
        keep_GD = torch.where(first_G[:, None], c1_GD, c2_GD)
        other_GD = torch.where(first_G[:, None], c2_GD, c1_GD)
        ok = torch.nonzero(ok_G).squeeze(1)
        kept += latents_G[ok].tolist()
        keep_dirs += list(keep_GD[ok].unbind(0))
        other_dirs += list(other_GD[ok].unbind(0))
        cosines += (keep_GD[ok] * other_GD[ok]).sum(1).tolist()
        start = stop
    return kept, keep_dirs, other_dirs, cosines


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
    kept, keep_dirs, other_dirs, cosines = _split_directions(model, reservoir_RD, center_D, cands_C, active_RC,
                                                             min_rows)
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
