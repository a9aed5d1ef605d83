"""Training configuration: what SAEs to train and how."""
from __future__ import annotations

from dataclasses import dataclass, field

TRAINERS = ("topk", "fc_topk", "relu_l1", "batchtopk", "matryoshka")


class TrainConfigError(ValueError):
    """An invalid training configuration value."""


@dataclass
class TrackerConfig:
    beta: float = 0.99
    """EMA decay of the frequency / consistency statistics."""
    tau_act: float = 0.0
    """A latent counts as active when |a| > tau_act."""
    mode: str = "direction"
    """Consistency definition: ``direction`` (mean resultant length of unit input directions) or
    ``seed`` (1 / (1 + mean variance of raw inputs))."""
    projection_dim: int | None = None
    """Optional fixed random projection of directions to this many dims (memory O(m*p))."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta < 1.0:
            raise TrainConfigError(f"train.tracker.beta must be in [0, 1), got {self.beta}")
        if self.mode not in ("direction", "seed"):
            raise TrainConfigError(f"train.tracker.mode must be direction or seed, got {self.mode!r}")


@dataclass
class TrainConfig:
    trainers: list[str] = field(default_factory=lambda: ["topk", "fc_topk"])
    """Trainer recipes to run; each is trained once per seed."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Seeds; every trainer gets every seed so comparisons are seed-matched."""
    d_sae: int = 4096
    """Dictionary width (latents)."""
    k: int = 32
    """Active latents per token for TopK-family trainers (the L0 target)."""
    n_tokens: int = 1_000_000
    """Training tokens (rows drawn from the activation cache)."""
    batch_size: int = 1024
    """Rows per optimiser step."""
    lr: float = 4e-4
    """Adam learning rate (peak)."""

    def __post_init__(self) -> None:
        bad = [t for t in self.trainers if t not in TRAINERS]
        if bad:
            raise TrainConfigError(f"train.trainers: unknown trainer {bad[0]!r} (allowed: {', '.join(TRAINERS)})")
        if self.d_sae <= 0 or self.k <= 0 or self.k > self.d_sae:
            raise TrainConfigError(f"train.k must be in 1..d_sae, got k={self.k}, d_sae={self.d_sae}")

    @staticmethod
    def preset(name: str) -> "TrainConfig":
        if name == "demo":
            return TrainConfig(d_sae=4096, k=32, n_tokens=1_000_000, batch_size=1024)
        if name == "pythia70m":
            return TrainConfig(d_sae=16384, k=80, n_tokens=200_000_000, batch_size=4096)
        if name == "tiny":
            return TrainConfig(d_sae=256, k=8, n_tokens=16384, batch_size=256, seeds=[0])
        raise TrainConfigError(f"no training preset {name!r}")
