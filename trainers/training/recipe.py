"""Training recipes as plug-ins.

A recipe names an SAE to train: how to build the module, which option groups it reads from
``train.options`` (each a small dataclass holding only its own knobs), and an optional ``maintain``
hook the training loop calls at the scheduled maintenance steps (every ``train.resample_every``
steps, not in the settling phase): dead-latent resampling, FC-guided splitting, or nothing.
The loop knows no recipe names; a new architecture's recipe is registered in its own file under
``trainers/saes`` (plus one import line in :mod:`trainers.training.registry`), an FC recipe in
:mod:`trainers.fc.recipes`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from fc_base.options import PluginRegistry

if TYPE_CHECKING:  # the option dataclasses stay importable without torch
    import torch

    from trainers.fc.tracker import FrequencyConsistencyTracker
    from trainers.saes.sae import SparseAutoencoder
    from trainers.training.config import TrainConfig


class MaintenanceContext(NamedTuple):
    """What a maintenance hook may read and change (weights, optimiser and tracker, in place)."""

    step: int
    cfg: "TrainConfig"
    model: "SparseAutoencoder"
    optimizer: "torch.optim.Optimizer"
    tracker: "FrequencyConsistencyTracker"
    reservoir_RD: "torch.Tensor"
    """Recent SAE inputs (normalised), the filled part of the reservoir."""
    dead_M: "torch.Tensor"
    """Latents that have not fired for ``train.dead_after_tokens`` tokens."""
    recently_touched_M: "torch.Tensor"
    """Latents rewritten within the tracker's memory (1 / (1 - beta) steps): too little evidence yet."""
    generator: "torch.Generator"
    """The recipe's own random stream (checkpointed with the run)."""


class MaintenanceResult(NamedTuple):
    touched_L: "torch.Tensor"
    """Every latent whose weights were rewritten (the loop resets their dead-token counters)."""
    events: dict[str, list[dict]] = {}
    """Rows per event table (``trainers.training.events``), for the tables the recipe declares."""
    n_resampled: int = 0
    """Dead latents re-initialised by resampling."""

    @staticmethod
    def nothing() -> "MaintenanceResult":
        import torch

        return MaintenanceResult(torch.empty(0, dtype=torch.long))

    def then(self, other: "MaintenanceResult") -> "MaintenanceResult":
        """This event followed by ``other`` in the same maintenance step."""
        import torch

        events = {name: self.events.get(name, []) + other.events.get(name, [])
                  for name in dict.fromkeys([*self.events, *other.events])}
        return MaintenanceResult(torch.cat([self.touched_L.cpu(), other.touched_L.cpu()]), events,
                                 self.n_resampled + other.n_resampled)


@dataclass(frozen=True)
class Recipe:
    name: str
    """Trainer name used in configs, SAE folder names and the results table."""
    description: str
    """One line for ``fc-sae train --help``."""
    build: Callable[[int, "TrainConfig", "torch.Generator"], "SparseAutoencoder"]
    """(d_in, train config, generator) -> a fresh SAE module."""
    options: tuple[type, ...] = ()
    """Option groups (``Options`` dataclasses) the recipe reads via ``cfg.option(cls)``."""
    maintain: Callable[[MaintenanceContext], MaintenanceResult] | None = None
    """Called at the maintenance steps; None: the recipe needs no maintenance."""
    events: tuple[str, ...] = ()
    """The event tables its maintenance writes rows to (``trainers.training.events``)."""
    sparsity: str = "k"
    """What sets the L0: ``k`` (train.k is the target) or ``penalty`` (an L1-style weight)."""
    train: Callable[..., Any] | None = None
    """A training loop of the recipe's own (external reference implementations), called as
    ``train(source, cfg, trainer, seed, out_dir, info, progress)``; None: the shared loop."""
    control: str | None = None
    """The recipe that does the same surgery on randomly chosen latents (its control arm), if any:
    a gain over the baseline is credited to the recipe's statistic only beyond that arm."""


def l0_target_of(recipe: Recipe, cfg: "TrainConfig") -> int | None:
    """The L0 an SAE of ``recipe`` aims at: ``train.k`` for k-sparse recipes; for penalty recipes the
    ``l0_target`` an option group states its weight was calibrated for, else None."""
    if recipe.sparsity == "k":
        return cfg.k
    for section in recipe.options:
        target = getattr(cfg.option(section), "l0_target", None)
        if target is not None:
            return target
    return None


RECIPES = PluginRegistry("trainer", "train", "trainers.training.registry")


def register(recipe: Recipe) -> Recipe:
    return RECIPES.add(recipe.name, recipe, recipe.options)


get_recipe = RECIPES.get
recipe_names = RECIPES.names
recipes = RECIPES.items
option_sections = RECIPES.sections
build_options = RECIPES.build_options
