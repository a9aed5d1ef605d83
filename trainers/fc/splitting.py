"""FC-guided splitting: latents that fire often on inconsistent inputs are split in two.

Candidates have absorption score s_i > mean(s) + z std(s), the mean and std taken over the
latents not recently touched (highest first, at most a fraction of the dictionary per event). For
each, what it explains on the recent inputs that activate it (the reconstruction error plus its own
contribution) is clustered into two direction patterns (spherical 2-means seeded by the sign of the
first principal direction); the candidate keeps the pattern nearest its current decoder direction and
a dead slot latent (frequency below ``dead_freq``) takes the other. The two halves share the parent's
encoder: half its encoder column and bias each, so together they give the parent's activation, pushed
apart along the whitened direction that separates the two patterns' inputs (each half then fires
mostly on its own pattern, and neither on tokens the parent ignored). Without dead slots fewer
latents are split: a living latent is never overwritten. Moments and tracker state of touched latents
are cleared (trainers.training.surgery).

``choose`` replaces the statistic: the random-surgery control picks as many candidates as the score
rule would, uniformly among the eligible latents with enough reservoir rows to be split, and runs the
same surgery.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from trainers.fc.tracker import FrequencyConsistencyTracker
from trainers.saes.sae import SparseAutoencoder
from fc_base.sae_folder import SPLITS_FILE
from trainers.training.events import EventTable, register_event_table
from trainers.training.surgery import set_latents


SPLITS = register_event_table(EventTable(
    "splits", SPLITS_FILE,
    {"step": "int64", "latent": "int64", "slot": "int64", "score": "float64", "frequency": "float64",
     "consistency": "float64", "cosine": "float64", "slot_frequency": "float64", "slot_dead": "bool"},
    "one FC split: the latent kept one cluster of its inputs, the slot was re-initialised on the other"))


class SplitResult(NamedTuple):
    rows: list[dict]
    """One log row per split (the columns of :data:`SPLITS`)."""
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


def draw_uniform(pool_M: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Up to n latents drawn uniformly without replacement from the marked ones."""
    pool_C = torch.nonzero(pool_M.cpu()).squeeze(1)
    return pool_C[torch.randperm(pool_C.numel(), generator=generator)[:n]].to(pool_M.device)


def select_random_candidates(score_M: torch.Tensor, z: float, max_count: int, eligible_M: torch.Tensor,
                             generator: torch.Generator) -> torch.Tensor:
    """As many candidates as :func:`select_candidates` would pick, uniformly among the eligible."""
    n = select_candidates(score_M, z, max_count, eligible_M).numel()
    return draw_uniform(eligible_M, n, generator).to(score_M.device)


@torch.no_grad()
def reservoir_row_counts(model: SparseAutoencoder, inputs_RD: torch.Tensor, tau_act: float,
                         chunk: int = 4096) -> torch.Tensor:
    """How many reservoir rows activate each latent (the rows a split would cluster)."""
    count_M = torch.zeros(model.d_sae, dtype=torch.long, device=inputs_RD.device)
    for i in range(0, inputs_RD.shape[0], chunk):
        count_M += (model.encode(inputs_RD[i:i + chunk]).abs() > tau_act).sum(0)
    return count_M


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


def segment_sum(values_N: torch.Tensor, group_N: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Sum of the rows of ``values_N`` per group (``group_N``: each row's group), shape (n_groups, ...)."""
    return torch.zeros((n_groups, *values_N.shape[1:]), dtype=values_N.dtype,
                       device=values_N.device).index_add_(0, group_N, values_N)


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
        return segment_sum(values_N, group_N, n_groups)

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


class ReservoirCodes(NamedTuple):
    """The model's view of the reservoir, for the split candidates."""
    active_RC: torch.Tensor
    """Which rows activate each candidate."""
    acts_RC: torch.Tensor
    """The candidates' activations."""
    error_RD: torch.Tensor
    """Reconstruction error x - x_hat of every row."""


@torch.no_grad()
def encode_reservoir(model: SparseAutoencoder, inputs_RD: torch.Tensor, latent_ids_C: torch.Tensor,
                     tau_act: float, chunk: int = 4096) -> ReservoirCodes:
    """The candidates' activations and every row's reconstruction error, with the model's own encoding."""
    acts, errors = [], []
    for i in range(0, inputs_RD.shape[0], chunk):
        x_BD = inputs_RD[i:i + chunk]
        acts_BM = model.encode(x_BD)
        acts.append(acts_BM[:, latent_ids_C])
        errors.append(x_BD - model.decode(acts_BM))
    acts_RC = torch.cat(acts)
    return ReservoirCodes(acts_RC.abs() > tau_act, acts_RC, torch.cat(errors))


_SPLIT_CHUNK_ELEMENTS = 1 << 26
"""Gathered (row, candidate) pairs x D per batched clustering call: bounds its memory (256 MiB)."""

SPLIT_SEPARATION = 0.25
"""How far the halves' encoders are pushed apart along the direction that separates their patterns,
relative to the parent's mean activation. Each half starts with half the parent's encoder and bias
(together they give the parent's activation), plus or minus this separation. On Gemma (width 4096,
k 32; benchmarks/split_surgery.py) the halves then clear the TopK threshold on a median 0.38x the
parent's tokens right after the split (32 latents, at most 9.5x); an encoder along the pattern's own
mean direction did so on a median 16x (up to 44x)."""


def _whitener(inputs_RD: torch.Tensor, center_D: torch.Tensor) -> torch.Tensor:
    """Cholesky factor of the reservoir's covariance (with a 1e-3 ridge): separating directions are
    taken in whitened space (Fisher's discriminant), so they do not follow the directions along which
    every input is large."""
    x_RD = (inputs_RD - center_D).double()
    cov_DD = torch.cov(x_RD.T) if x_RD.shape[0] > 1 else torch.eye(x_RD.shape[1], dtype=x_RD.dtype,
                                                                       device=x_RD.device)
    ridge = 1e-3 * cov_DD.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(cov_DD.shape[0], dtype=cov_DD.dtype, device=cov_DD.device)
    return torch.linalg.cholesky(cov_DD + ridge * eye)


class SplitHalves(NamedTuple):
    """The two halves of every candidate that found two patterns, in candidate order."""
    latents: list[int]
    """The split candidates (each keeps one half)."""
    keep_dec_LD: torch.Tensor
    """Unit decoder rows: the pattern nearer each candidate's current decoder."""
    other_dec_LD: torch.Tensor
    """Unit decoder rows of the other pattern (for the slot latents)."""
    keep_enc_LD: torch.Tensor
    """Encoder columns of the kept halves."""
    other_enc_LD: torch.Tensor
    """Encoder columns of the slot halves."""
    half_bias_L: torch.Tensor
    """Encoder bias of either half: half the parent's."""
    cosines: list[float]
    """Cosine between each candidate's two patterns."""


def split_halves(model: SparseAutoencoder, reservoir_RD: torch.Tensor, center_D: torch.Tensor,
                  cands_C: torch.Tensor, codes: ReservoirCodes, min_rows: int) -> SplitHalves:
    """For each candidate with at least ``min_rows`` activating rows: cluster what the candidate
    explains on those rows (the reconstruction error plus its own contribution) into two unit
    patterns; the kept half takes the pattern nearer the candidate's decoder. Encoders: half the
    parent's each, pushed apart along the whitened direction between the two patterns' mean inputs,
    scaled so the push is SPLIT_SEPARATION x the parent's mean activation on its rows."""
    count_C = codes.active_RC.sum(0).tolist()  # one transfer, then plain-int chunking
    cols = [j for j, n in enumerate(count_C) if n >= min_rows]
    d = reservoir_RD.shape[1]
    chol_DD = _whitener(reservoir_RD, center_D) if cols else None
    parts: list[tuple] = []
    start = 0
    while start < len(cols):  # chunks of candidates whose gathered rows fit the memory bound
        stop, elements = start + 1, count_C[cols[start]] * d
        while stop < len(cols) and elements + count_C[cols[stop]] * d <= _SPLIT_CHUNK_ELEMENTS:
            elements += count_C[cols[stop]] * d
            stop += 1
        chunk = cols[start:stop]
        n_groups = len(chunk)
        group_N, rows_N = torch.nonzero(codes.active_RC[:, chunk].T, as_tuple=True)
        latents_G = cands_C[chunk].to(model.W_dec.device)
        dec_GD = model.W_dec.data[latents_G]
        a_N = codes.acts_RC[rows_N, torch.as_tensor(chunk, device=rows_N.device)[group_N]]
        v_ND = codes.error_RD[rows_N] + a_N[:, None] * dec_GD[group_N]
        u_ND = v_ND / v_ND.norm(dim=1, keepdim=True).clamp_min(1e-12)
        c1_GD, c2_GD, ok_G = two_direction_patterns(u_ND, group_N, n_groups)
        current_GD = dec_GD.to(u_ND)
        first_G = (current_GD * c1_GD).sum(1) >= (current_GD * c2_GD).sum(1)
        keep_GD = torch.where(first_G[:, None], c1_GD, c2_GD)
        other_GD = torch.where(first_G[:, None], c2_GD, c1_GD)
        # The patterns' mean inputs, and the whitened direction from the kept one to the other.
        x_ND = reservoir_RD[rows_N] - center_D
        other_N = (u_ND * other_GD[group_N]).sum(1) > (u_ND * keep_GD[group_N]).sum(1)

        def group_mean(values_N: torch.Tensor, mask_N: torch.Tensor) -> torch.Tensor:
            w_N = mask_N.to(values_N.dtype).reshape(-1, *([1] * (values_N.dim() - 1)))
            return (segment_sum(values_N * w_N, group_N, n_groups)
                    / segment_sum(w_N, group_N, n_groups).clamp_min(1))

        diff_GD = (group_mean(x_ND, other_N) - group_mean(x_ND, ~other_N)).double()
        sep_GD = torch.cholesky_solve(diff_GD.T, chol_DD).T.to(x_ND.dtype)
        sep_GD = sep_GD / sep_GD.norm(dim=1, keepdim=True).clamp_min(1e-12)
        t_N = (x_ND * sep_GD[group_N]).sum(1)
        all_N = torch.ones_like(other_N)
        scale_G = group_mean(a_N.abs(), all_N) / group_mean(t_N.abs(), all_N).clamp_min(1e-12)
        half_enc_GD = 0.5 * model.W_enc.data[:, latents_G].T
        push_GD = SPLIT_SEPARATION * scale_G[:, None] * sep_GD
        ok = torch.nonzero(ok_G).squeeze(1)
        parts.append((latents_G[ok].tolist(), keep_GD[ok], other_GD[ok], (half_enc_GD - push_GD)[ok],
                      (half_enc_GD + push_GD)[ok], 0.5 * model.b_enc.data[latents_G[ok]],
                      (keep_GD[ok] * other_GD[ok]).sum(1).tolist()))
        start = stop
    if not parts:
        empty_LD = torch.empty(0, d)
        return SplitHalves([], empty_LD, empty_LD, empty_LD, empty_LD, torch.empty(0), [])
    return SplitHalves(sum((p[0] for p in parts), []), *(torch.cat([p[i] for p in parts]) for i in range(1, 6)),
                       sum((p[6] for p in parts), []))


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
    if random_generator is not None:
        eligible_M &= freq_M > dead_freq  # the control never picks a dead latent
    cands_C = select_candidates(score_M, z, max_count, eligible_M)
    if cands_C.numel() == 0:
        return empty
    free_M = freq_M < dead_freq  # the only possible slots: without one, skip the reservoir pass
    if protected_M is not None:
        free_M &= ~protected_M.to(freq_M.device)
    if not bool(free_M.any()):
        return empty
    if random_generator is not None:
        # The control draws as many latents as the score rule picked, among those the surgery can
        # split (at least min_rows activating reservoir rows). Drawn among all living latents, its
        # rarer picks often lacked the rows to cluster, and it made about a third fewer splits.
        rows_M = reservoir_row_counts(model, reservoir_RD, tracker.tau_act).to(eligible_M.device)
        cands_C = draw_uniform(eligible_M & (rows_M >= min_rows), cands_C.numel(), random_generator)
        if cands_C.numel() == 0:
            return empty
    codes = encode_reservoir(model, reservoir_RD, cands_C.to(reservoir_RD.device), tracker.tau_act)
    halves = split_halves(model, reservoir_RD, center_D, cands_C, codes, min_rows)
    if not halves.latents:
        return empty
    kept_L = torch.tensor(halves.latents, dtype=torch.long)
    exclude = kept_L if protected_M is None else torch.cat([kept_L, torch.nonzero(protected_M.cpu()).squeeze(1)])
    slots_L = select_slots(freq_M.cpu(), len(kept_L), exclude, dead_freq)
    n = len(slots_L)  # fewer dead latents than candidates: split the best ones only
    if n == 0:
        return empty
    kept_L, kept, cosines = kept_L[:n], halves.latents[:n], halves.cosines[:n]
    ids_L = torch.cat([kept_L, slots_L])
    dirs_LD = torch.cat([halves.keep_dec_LD[:n], halves.other_dec_LD[:n]])
    enc_LD = torch.cat([halves.keep_enc_LD[:n], halves.other_enc_LD[:n]])
    b_enc_L = halves.half_bias_L[:n].repeat(2)
    slot_freq = freq_M.cpu()[slots_L].tolist()
    set_latents(model, optimizer, tracker, ids_L, dirs_LD, enc_LD, b_enc_L)
    rows = [{"step": step, "latent": lat, "slot": int(slot), "score": float(score_M[lat]),
             "frequency": float(freq_M[lat]), "consistency": float(cons_M[lat]), "cosine": cos,
             "slot_frequency": sf, "slot_dead": sf < dead_freq}
            for lat, slot, cos, sf in zip(kept, slots_L.tolist(), cosines, slot_freq)]
    return SplitResult(rows, ids_L)
