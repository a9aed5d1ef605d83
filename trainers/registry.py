"""Trainer name -> SAE module (the FC trainer is TopK plus tracker-guided splitting)."""
from __future__ import annotations

import torch

from trainers.batchtopk import BatchTopKSAE
from trainers.config import TrainConfig
from trainers.matryoshka import MatryoshkaBatchTopKSAE
from trainers.relu_l1 import ReluL1SAE
from trainers.sae import SparseAutoencoder
from trainers.topk import TopKSAE

SPLITTING_TRAINERS = ("fc_topk",)
RESAMPLING_TRAINERS = ("relu_l1",)


def build_sae(trainer: str, cfg: TrainConfig, d_in: int, generator: torch.Generator) -> SparseAutoencoder:
    if trainer in ("topk", "fc_topk"):
        return TopKSAE(d_in, cfg.d_sae, cfg.k, auxk_alpha=cfg.auxk_alpha, auxk_k=cfg.auxk_k, generator=generator)
    if trainer == "batchtopk":
        return BatchTopKSAE(d_in, cfg.d_sae, cfg.k, auxk_alpha=cfg.auxk_alpha, auxk_k=cfg.auxk_k,
                            threshold_beta=cfg.batchtopk_threshold_beta, generator=generator)
    if trainer == "matryoshka":
        return MatryoshkaBatchTopKSAE(d_in, cfg.d_sae, cfg.k, group_fractions=cfg.matryoshka_fractions,
                                      auxk_alpha=cfg.auxk_alpha, auxk_k=cfg.auxk_k,
                                      threshold_beta=cfg.batchtopk_threshold_beta, generator=generator)
    if trainer == "relu_l1":
        return ReluL1SAE(d_in, cfg.d_sae, l1_coeff=cfg.l1_coeff, generator=generator)
    raise ValueError(f"unknown trainer {trainer!r}")
