"""Every training recipe, registered by importing its module: a new recipe is one file plus one
import line here. Look recipes up with ``trainers.recipe.get_recipe`` / ``recipe_names``."""
from __future__ import annotations

import torch

import trainers.topk  # noqa: F401  (one line per recipe module, in the order help lists them)
import trainers.fc_topk  # noqa: F401
import trainers.random_split_topk  # noqa: F401
import trainers.relu_l1  # noqa: F401
import trainers.fc_relu_l1  # noqa: F401
import trainers.random_split_relu_l1  # noqa: F401
import trainers.batchtopk  # noqa: F401
import trainers.fc_batchtopk  # noqa: F401
import trainers.matryoshka  # noqa: F401
import trainers.fc_matryoshka  # noqa: F401
import trainers.fc2  # noqa: F401
import trainers.saelens_reference  # noqa: F401
from trainers.config import TrainConfig
from trainers.recipe import get_recipe
from trainers.sae import SparseAutoencoder


def build_sae(trainer: str, cfg: TrainConfig, d_in: int, generator: torch.Generator) -> SparseAutoencoder:
    """A fresh SAE of recipe ``trainer``."""
    return get_recipe(trainer).build(d_in, cfg, generator)
