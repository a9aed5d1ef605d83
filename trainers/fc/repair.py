"""Absorption repair driven by the hole statistics (FC v2).

A parent latent p has *hole rows*: inputs whose projection on p's own decoder direction is large
(above half its mean projection when it fires) while p is silent. When a child latent c absorbed p,
c is what fires on those rows. A repair event:

1. flags parents by ``statistic``: ``hole_score`` s_i = f_i * H_i / P_i, or ``encoder_suppression``
   (weights only, computed at the event), above mean + z std (over the latents not recently
   touched), highest first, at most ``max_frac`` of the dictionary;
2. finds each flagged parent's hole rows in the reservoir of recent inputs and the latent that fires
   most often on them: the absorbing child c (skipped with fewer than ``min_rows`` hole rows);
3. repairs, by ``mode``:
   - ``decoder``: removes p's direction from c's decoder (d_c <- normalise(d_c - (d_c . d_p) d_p)) and
     re-fits both encoders to their decoder directions (each keeps its norm and bias), so p's encoder
     is no longer turned away from c's own direction;
   - ``encoder``: only re-fits p's encoder to its decoder direction (un-suppresses the parent);
4. clears Adam moments and tracker state of every touched latent (trainers.training.surgery).

The control (``random_generator``) flags as many parents, uniformly among the eligible living
latents, and runs the same child search and surgery: a gain over it is the statistic's.

:func:`repair_maintain` is the maintenance hook of the repair recipes (``fc2_topk`` and its
variants, registered in trainers.fc.recipes), with their options :class:`FC2Options`. No event
before the tracker's EMAs have seen 1 / (1 - beta) steps; recently touched latents are neither
flagged nor part of the threshold's statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from fc_base.errors import check
from fc_base.options import Options
from fc_base.sae_folder import REPAIRS_FILE
from trainers.fc.splitting import select_candidates, select_random_candidates
from trainers.fc.tracker import FrequencyConsistencyTracker, encoder_suppression, tracker_warm
from trainers.saes.sae import SparseAutoencoder
from trainers.training.events import EventTable, register_event_table
from trainers.training.recipe import MaintenanceContext, MaintenanceResult
from trainers.training.surgery import reinit_latents

REPAIR_MODES = ("decoder", "encoder")
REPAIR_STATISTICS = ("hole_score", "encoder_suppression")


REPAIRS = register_event_table(EventTable(
    "repairs", REPAIRS_FILE,
    {"step": "int64", "latent": "int64", "child": "int64", "score": "float64", "hole_rows": "int64",
     "child_share": "float64", "cos_before": "float64", "cos_after": "float64", "mode": "object"},
    "one absorption repair: the parent (latent) and the child whose weights lost its direction"))


class RepairResult(NamedTuple):
    rows: list[dict]
    """One log row per repaired parent (the columns of :data:`REPAIRS`)."""
    touched_ids: torch.Tensor
    """Every latent whose weights changed."""


@torch.no_grad()
def hole_children(model: SparseAutoencoder, reservoir_RD: torch.Tensor, center_D: torch.Tensor,
                  parents_C: torch.Tensor, mean_proj_C: torch.Tensor, chunk: int = 2048
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per parent: the number of its hole rows in the reservoir, and how often every latent fires on
    them (C x M), from the model's own encoding; never an R x M tensor."""
    d_CD = model.W_dec.data[parents_C]
    d_CD = d_CD / d_CD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    holes_C = torch.zeros(parents_C.numel(), device=reservoir_RD.device)
    counts_CM = torch.zeros(parents_C.numel(), model.d_sae, device=reservoir_RD.device)
    for x_RD in reservoir_RD.split(chunk):
        fires_RM = (model.encode(x_RD) > 0).float()
        proj_RC = (x_RD - center_D) @ d_CD.T
        hole_RC = ((proj_RC > 0.5 * mean_proj_C) & (fires_RM[:, parents_C] == 0)).float()
        holes_C += hole_RC.sum(0)
        counts_CM += hole_RC.T @ fires_RM
    return holes_C, counts_CM


@torch.no_grad()
def repair_absorption(model: SparseAutoencoder, optimizer: torch.optim.Optimizer, tracker: FrequencyConsistencyTracker,
                      reservoir_RD: torch.Tensor, center_D: torch.Tensor, *, step: int, z: float, max_frac: float,
                      min_rows: int, mode: str, protected_M: torch.Tensor | None = None,
                      random_generator: torch.Generator | None = None,
                      statistic: str = "hole_score") -> RepairResult:
    """One repair event (module docstring)."""
    if mode not in REPAIR_MODES:
        raise ValueError(f"repair mode must be one of {REPAIR_MODES}, got {mode!r}")
    if statistic not in REPAIR_STATISTICS:
        raise ValueError(f"repair statistic must be one of {REPAIR_STATISTICS}, got {statistic!r}")
    empty = RepairResult([], torch.empty(0, dtype=torch.long))
    score_M = tracker.hole_score
    if score_M is None:
        raise ValueError("absorption repair needs the tracker's hole statistics (train.tracker.hole_rows > 0)")
    if statistic == "encoder_suppression":
        score_M = encoder_suppression(model.W_enc.data, model.W_dec.data).to(score_M.device)
    eligible_M = tracker.hole_fired > 0
    if protected_M is not None:
        eligible_M &= ~protected_M.to(score_M.device)
    max_count = max(1, int(max_frac * model.d_sae))
    if random_generator is None:
        parents_C = select_candidates(score_M, z, max_count, eligible_M)
    else:
        parents_C = select_random_candidates(score_M, z, max_count, eligible_M, random_generator)
    if parents_C.numel() == 0 or reservoir_RD.shape[0] == 0:
        return empty
    mean_proj_C = tracker.hole_mean_projection[parents_C]
    holes_C, counts_CM = hole_children(model, reservoir_RD, center_D, parents_C.to(reservoir_RD.device),
                                       mean_proj_C.to(reservoir_RD.device))
    counts_CM[torch.arange(parents_C.numel()), parents_C] = -1.0  # a parent is not its own child
    child_share_C, children_C = counts_CM.max(1)
    W_dec_MD, W_enc_DM, b_enc_M = model.W_dec.data, model.W_enc.data, model.b_enc.data
    ids, dirs, norms, biases, rows, used = [], [], [], [], [], set()
    for parent, child, n_holes, n_child in zip(parents_C.tolist(), children_C.tolist(), holes_C.tolist(),
                                               child_share_C.tolist()):
        if n_holes < min_rows or n_child <= 0 or parent in used or child in used:
            continue
        used.update((parent, child))
        d_p = W_dec_MD[parent] / W_dec_MD[parent].norm().clamp_min(1e-12)
        d_c = W_dec_MD[child] / W_dec_MD[child].norm().clamp_min(1e-12)
        cos_before = float(d_c @ d_p)
        ids.append(parent)
        dirs.append(d_p)
        norms.append(W_enc_DM[:, parent].norm())
        biases.append(b_enc_M[parent])
        cos_after = cos_before
        if mode == "decoder":
            new_c = d_c - cos_before * d_p
            new_c = new_c / new_c.norm().clamp_min(1e-12)
            cos_after = float(new_c @ d_p)
            ids.append(child)
            dirs.append(new_c)
            norms.append(W_enc_DM[:, child].norm())
            biases.append(b_enc_M[child])
        rows.append({"step": step, "latent": parent, "child": child, "score": float(score_M[parent]),
                     "hole_rows": int(n_holes), "child_share": n_child / n_holes, "cos_before": cos_before,
                     "cos_after": cos_after, "mode": mode})
    if not ids:
        return empty
    ids_L = torch.tensor(ids, dtype=torch.long)
    reinit_latents(model, optimizer, tracker, ids_L, torch.stack(dirs), torch.stack(norms).cpu(),
                   torch.stack(biases).cpu())
    return RepairResult(rows, ids_L)


@dataclass
class FC2Options(Options):
    """Absorption repair events."""

    section = "fc2"
    z: float = 1.0
    """Parents are flagged when their hole score is above mean + z * std."""
    max_frac: float = 0.01
    """At most this fraction of the dictionary is repaired per event."""
    min_rows: int = 8
    """A flagged parent needs at least this many hole rows in the reservoir."""

    def __post_init__(self) -> None:
        check(0 < self.max_frac <= 0.5, f"train.options.fc2.max_frac must be in (0, 0.5], got {self.max_frac}")
        check(self.min_rows >= 1, f"train.options.fc2.min_rows must be >= 1, got {self.min_rows}")


def repair_maintain(mode: str, control: bool = False, statistic: str = "hole_score"):
    """The maintenance hook of a repair recipe: one :func:`repair_absorption` event with its options."""
    def maintain(ctx: MaintenanceContext) -> MaintenanceResult:
        if not tracker_warm(ctx):
            return MaintenanceResult.nothing()
        opts = ctx.cfg.option(FC2Options)
        result = repair_absorption(ctx.model, ctx.optimizer, ctx.tracker, ctx.reservoir_RD,
                                   ctx.model.b_dec.data.detach(), step=ctx.step, z=opts.z, max_frac=opts.max_frac,
                                   min_rows=opts.min_rows, mode=mode, protected_M=ctx.recently_touched_M,
                                   random_generator=ctx.generator if control else None, statistic=statistic)
        return MaintenanceResult(result.touched_ids, {REPAIRS.name: result.rows})

    return maintain
