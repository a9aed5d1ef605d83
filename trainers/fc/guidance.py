"""FC guidance: FrequencyConsistencyTracker-steered splitting, composable with any recipe.

``with_fc_guidance(base)`` makes a recipe that trains ``base``'s SAE and, at every maintenance step,
splits the latents with the highest absorption score s_i = f_i (1 - c_i) (trainers.fc.splitting), then
runs ``base``'s own maintenance (e.g. resampling of the dead latents the splits left unused). The
recipes ``fc_topk``, ``fc_relu_l1``, ``fc_batchtopk`` and ``fc_matryoshka`` are built this way
(trainers.fc.recipes).

``with_fc_guidance(base, control=True)`` is the random-surgery control (``random_split_<base>``): the
same events at the same steps, as many splits per event as the score rule would make, the same
surgery, on candidates drawn uniformly among the eligible living latents. Without it no gain can be
credited to the statistic. No event happens before the tracker's EMAs have seen 1 / (1 - beta) steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fc_base.errors import check
from fc_base.options import Options
from trainers.fc.splitting import SPLITS, fc_split
from trainers.fc.tracker import tracker_warm
from trainers.training.recipe import MaintenanceContext, MaintenanceResult, Recipe


@dataclass
class FCOptions(Options):
    """FC-guided splitting."""

    section = "fc"
    z: float = 1.0
    """Split candidates have absorption score > mean + z * std."""
    max_split_frac: float = 0.0025
    """At most this fraction of the dictionary is split per event. Many simultaneous splits wreck
    the reconstruction until training recovers (Gemma-3-270m demo: 1% per event left explained
    variance negative during the splitting phase; 0.25% matched TopK's final loss)."""
    dead_freq: float = 1e-5
    """Latents whose firing frequency is below this are the first slots for split halves."""
    min_rows: int = 8
    """A candidate needs at least this many activating reservoir rows to be split."""
    max_freq: float = 1.0
    """Latents firing on more than this fraction of inputs are never candidates (nor counted in the
    threshold's mean and std). 1.0 keeps the seed's rule. On Gemma-3-270m (width 4096, k 32) the
    score picked latents firing on 25-50% of tokens, and splitting them wrecked training (MSE x100,
    71% of latents dead); the experiment preset sets 0.1."""

    def __post_init__(self) -> None:
        check(0 < self.max_split_frac <= 0.5, f"train.options.fc.max_split_frac must be in (0, 0.5], got {self.max_split_frac}")
        check(self.dead_freq >= 0, f"train.options.fc.dead_freq must be >= 0, got {self.dead_freq}")
        check(self.min_rows >= 2, f"train.options.fc.min_rows must be >= 2, got {self.min_rows}")
        check(0 < self.max_freq <= 1, f"train.options.fc.max_freq must be in (0, 1], got {self.max_freq}")


def fc_split_maintain(ctx: MaintenanceContext, *, control: bool = False) -> MaintenanceResult:
    """One FC split event; recently touched latents are neither candidates nor slots."""
    if not tracker_warm(ctx):
        return MaintenanceResult.nothing()
    opts = ctx.cfg.option(FCOptions)
    result = fc_split(ctx.model, ctx.optimizer, ctx.tracker, ctx.reservoir_RD, ctx.model.b_dec.data.detach(),
                      step=ctx.step, z=opts.z, max_split_frac=opts.max_split_frac, dead_freq=opts.dead_freq,
                      min_rows=opts.min_rows, protected_M=ctx.recently_touched_M,
                      random_generator=ctx.generator if control else None, max_freq=opts.max_freq)
    return MaintenanceResult(result.touched_ids, {SPLITS.name: result.rows})


def with_fc_guidance(base: Recipe, name: str | None = None, *, control: bool = False) -> Recipe:
    """``base`` plus FC splitting before its own maintenance (if any); ``control``: the
    random-surgery control arm."""
    then = base.maintain

    def maintain(ctx: MaintenanceContext) -> MaintenanceResult:
        split = fc_split_maintain(ctx, control=control)
        if then is None:
            return split
        # Latents the split just rewrote are neither dead nor free for the base's maintenance.
        touched_M = torch.zeros_like(ctx.dead_M)
        touched_M[split.touched_L.to(touched_M.device)] = True
        after = then(ctx._replace(dead_M=ctx.dead_M & ~touched_M,
                                  recently_touched_M=ctx.recently_touched_M | touched_M.to(ctx.recently_touched_M.device)))
        return split.then(after)

    default_name, what = ((f"random_split_{base.name}", "FC's split surgery on random latents (control)") if control
                          else (f"fc_{base.name}", "FC-guided splitting"))
    return Recipe(name or default_name, f"{base.description}, plus {what}", base.build,
                  options=(*base.options, FCOptions), maintain=maintain, sparsity=base.sparsity,
                  events=tuple(dict.fromkeys([SPLITS.name, *base.events])),
                  control=None if control else f"random_split_{base.name}")
