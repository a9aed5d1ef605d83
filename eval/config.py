"""Evaluation configuration."""
from __future__ import annotations

from dataclasses import dataclass, field

EVALS = ("absorption", "core", "sparse_probing_sae_probes", "scr", "tpp", "sparse_probing",
         "autointerp", "unlearning", "ravel")


class EvalConfigError(ValueError):
    """An invalid evaluation configuration value."""


@dataclass
class EvalConfig:
    evals: list[str] = field(default_factory=lambda: ["absorption", "core"])
    """SAE-Bench evals to run for every SAE."""
    absorption_word_sample: int | None = 8000
    """Words sampled from the vocabulary for the absorption eval (None: full vocabulary)."""

    def __post_init__(self) -> None:
        bad = [e for e in self.evals if e not in EVALS]
        if bad:
            raise EvalConfigError(f"eval.evals: unknown eval {bad[0]!r} (allowed: {', '.join(EVALS)})")

    @staticmethod
    def preset(name: str) -> "EvalConfig":
        if name in ("demo", "pythia70m"):
            return EvalConfig()
        if name == "tiny":
            return EvalConfig(absorption_word_sample=1000)
        raise EvalConfigError(f"no eval preset {name!r}")
