"""Every training recipe, registered by importing the modules that define them. Look recipes up
with ``trainers.training.recipe.get_recipe`` / ``recipe_names``: the first lookup imports this module.

A new architecture is one file in ``trainers/saes`` plus an import line here; its FC arms are a few
lines in ``trainers/fc/recipes.py``, which imports every architecture that has FC arms (each just
before its arms, so help lists an architecture followed by them)."""
from __future__ import annotations

import torch

import trainers.fc.recipes  # noqa: F401  (topk, relu_l1, batchtopk, matryoshka, each with its FC arms; then fc2)
import trainers.reference.saelens  # noqa: F401
from trainers.saes.sae import SparseAutoencoder
from trainers.training.config import TrainConfig
from trainers.training.recipe import get_recipe


def build_sae(trainer: str, cfg: TrainConfig, d_in: int, generator: torch.Generator) -> SparseAutoencoder:
    """A fresh SAE of recipe ``trainer``."""
    return get_recipe(trainer).build(d_in, cfg, generator)
