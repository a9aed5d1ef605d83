"""FC v2 recipes: TopK with absorption repair driven by the hole statistics (trainers.repair).

- ``fc2_topk``: repair mode ``decoder`` (the absorbing child's decoder loses the parent direction;
  both encoders re-fit);
- ``fc2enc_topk``: repair mode ``encoder`` (only the parent's encoder is re-fit);
- ``fc2sup_topk``: mode ``decoder``, parents flagged by encoder suppression instead of the hole score;
- ``random_repair_topk``: the control of the decoder mode, on randomly flagged parents;
- ``random_repair_enc_topk``: the control of the encoder mode, on randomly flagged parents.

No event before the tracker's EMAs have seen 1 / (1 - beta) steps; recently touched latents are
neither flagged nor part of the threshold's statistics.
"""
from __future__ import annotations

from dataclasses import dataclass

from fc_base.errors import check
from fc_base.options import Options
from trainers.recipe import MaintenanceContext, MaintenanceResult, Recipe, register, tracker_warm
from trainers.repair import repair_absorption
from trainers.topk import TOPK


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
    def maintain(ctx: MaintenanceContext) -> MaintenanceResult:
        if not tracker_warm(ctx):
            return MaintenanceResult.nothing()
        opts = ctx.cfg.option(FC2Options)
        result = repair_absorption(ctx.model, ctx.optimizer, ctx.tracker, ctx.reservoir_RD,
                                   ctx.model.b_dec.data.detach(), step=ctx.step, z=opts.z, max_frac=opts.max_frac,
                                   min_rows=opts.min_rows, mode=mode, protected_M=ctx.recently_touched_M,
                                   random_generator=ctx.generator if control else None, statistic=statistic)
        return MaintenanceResult(result.touched_ids, [], 0, result.rows)

    return maintain


def _repair_recipe(name: str, description: str, mode: str, control: bool = False,
                   statistic: str = "hole_score") -> Recipe:
    # Each repair mode has its control: the same surgery on randomly flagged parents.
    control_arm = None if control else {"decoder": "random_repair_topk", "encoder": "random_repair_enc_topk"}[mode]
    return Recipe(name, description, TOPK.build, options=(*TOPK.options, FC2Options),
                  maintain=repair_maintain(mode, control, statistic), control=control_arm)


FC2_TOPK = register(_repair_recipe(
    "fc2_topk", "TopK + absorption repair: the absorbing child's decoder loses the parent direction", "decoder"))
FC2ENC_TOPK = register(_repair_recipe(
    "fc2enc_topk", "TopK + absorption repair: the flagged parent's encoder is re-fit", "encoder"))
FC2SUP_TOPK = register(_repair_recipe(
    "fc2sup_topk", "TopK + absorption repair on parents flagged by encoder suppression", "decoder",
    statistic="encoder_suppression"))
RANDOM_REPAIR_TOPK = register(_repair_recipe(
    "random_repair_topk", "TopK + fc2_topk's repair on randomly flagged latents (control)", "decoder", control=True))
RANDOM_REPAIR_ENC_TOPK = register(_repair_recipe(
    "random_repair_enc_topk", "TopK + fc2enc_topk's repair on randomly flagged latents (control)", "encoder",
    control=True))
