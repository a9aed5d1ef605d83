"""Evaluation configuration: which SAE-Bench evals run and how large each one is."""
from __future__ import annotations

from dataclasses import dataclass, field

# Evals that run offline here (their data ships with the installed packages or comes from the run).
OFFLINE_EVALS = ("absorption", "core", "sparse_probing_sae_probes")
# Evals whose data or API live on the network; recorded as skipped where unreachable.
NETWORK_EVALS = ("scr", "tpp", "sparse_probing", "autointerp", "unlearning", "ravel")
EVALS = OFFLINE_EVALS + NETWORK_EVALS
DTYPES = ("float32", "bfloat16", "float16")


class EvalConfigError(ValueError):
    """An invalid evaluation configuration value."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise EvalConfigError(msg)


@dataclass
class EvalConfig:
    evals: list[str] = field(default_factory=lambda: ["absorption", "core"])
    """SAE-Bench evals to run for every SAE."""
    absorption_word_sample: int | None = 8000
    """Words sampled from the vocabulary for the absorption eval (None: full vocabulary)."""
    word_sample_seed: int = 0
    """Seed of the word sample, the probe train/test split and the in-context prompts."""
    llm_dtype: str = "float32"
    """Dtype of the language model inside the evals (float32, bfloat16, float16); SAEs run in it too."""
    device: str = "auto"
    """Device for evals: auto (cuda if available, else cpu), cpu, cuda, cuda:N."""
    llm_batch_size: int = 32
    """Prompts per language-model forward in absorption and sae-probes activation collection."""
    absorption_max_k: int = 10
    """Largest k of sae-bench's k-sparse probes (feature-split detection)."""
    absorption_probe_epochs: int = 50
    """Epochs of sae-bench's L1 probe over SAE latents (its k-sparse probing step)."""
    absorption_min_probe_f1: float = 0.6
    """A first letter counts as represented when its ground-truth probe F1 exceeds this."""
    absorption_min_letters: int = 20
    """Letters that must pass ``absorption_min_probe_f1`` for absorption to be evaluated (sae-bench rule)."""
    core_n_docs: int = 2000
    """Documents written from the run's corpus into the local text dataset core eval reads."""
    core_context_length: int = 128
    """Tokens per sequence in core eval."""
    core_batch_size_prompts: int = 8
    """Sequences per core-eval batch."""
    core_reconstruction_batches: int = 10
    """Batches for the downstream (KL, CE loss) metrics of core eval."""
    core_sparsity_batches: int = 2
    """Batches for the sparsity, variance and shrinkage metrics of core eval."""
    sae_probes_datasets: list[str] = field(
        default_factory=lambda: ["119_us_state_TX", "5_hist_fig_ismale", "113_movie_sent"])
    """sae-probes datasets (shipped in the sae-probes package) for ``sparse_probing_sae_probes``."""
    sae_probes_ks: list[int] = field(default_factory=lambda: [1, 2, 5])
    """Numbers of SAE latents each sae-probes probe may use."""
    sae_probes_max_seq_len: int = 256
    """Longest text (tokens) fed to the model when collecting sae-probes activations."""
    sae_probes_llm_baseline: bool = True
    """Also fit sae-probes' logistic-regression baseline on the raw model activations."""
    hub_check_timeout_s: float = 3.0
    """Seconds to wait for the Hugging Face Hub / API endpoints before recording an eval as skipped."""

    def __post_init__(self) -> None:
        _check(isinstance(self.evals, list), "eval.evals must be a list of eval names")
        bad = [e for e in self.evals if e not in EVALS]
        _check(not bad, f"eval.evals: unknown eval {bad[0]!r} (allowed: {', '.join(EVALS)})" if bad else "")
        _check(len(set(self.evals)) == len(self.evals), f"eval.evals lists an eval twice: {self.evals}")
        _check(self.absorption_word_sample is None or self.absorption_word_sample >= 100,
               f"eval.absorption_word_sample must be None (full vocabulary) or >= 100, "
               f"got {self.absorption_word_sample}")
        _check(self.llm_dtype in DTYPES, f"eval.llm_dtype must be one of {DTYPES}, got {self.llm_dtype!r}")
        _check(bool(self.device.strip()), "eval.device must not be empty")
        for name in ("llm_batch_size", "absorption_max_k", "absorption_probe_epochs", "core_n_docs",
                     "core_batch_size_prompts", "core_reconstruction_batches", "core_sparsity_batches",
                     "sae_probes_max_seq_len"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value > 0, f"eval.{name} must be a positive integer, got {value!r}")
        _check(self.core_context_length >= 2, f"eval.core_context_length must be >= 2, got {self.core_context_length}")
        _check(0.0 <= self.absorption_min_probe_f1 < 1.0,
               f"eval.absorption_min_probe_f1 must be in [0, 1), got {self.absorption_min_probe_f1}")
        _check(1 <= self.absorption_min_letters <= 26,
               f"eval.absorption_min_letters must be in 1..26, got {self.absorption_min_letters}")
        _check(bool(self.sae_probes_datasets), "eval.sae_probes_datasets must name at least one dataset")
        _check(bool(self.sae_probes_ks) and all(isinstance(k, int) and k > 0 for k in self.sae_probes_ks),
               f"eval.sae_probes_ks must be positive integers, got {self.sae_probes_ks}")
        _check(self.hub_check_timeout_s > 0, "eval.hub_check_timeout_s must be > 0")

    @staticmethod
    def preset(name: str) -> "EvalConfig":
        if name == "demo":
            # Gemma-3-270m layer 5, 8000 words: 23/26 letters pass sae-bench's probe rule (float32 and
            # bfloat16 alike).  The probe and its word activations are built once and shared
            # by every SAE.  float32: TransformerLens
            # runs Gemma no faster in bfloat16 on CPU, and core's variance metrics need the precision
            # (Gemma's residual norms reach 1e4).
            # Core runs full forwards with Gemma's 262k-token unembedding: 2 x 4 sequences keep it
            # near 30 s per SAE on 2 cores.
            return EvalConfig(llm_dtype="float32", core_batch_size_prompts=4, core_reconstruction_batches=2,
                              core_sparsity_batches=2)
        if name == "pythia70m":
            return EvalConfig(absorption_word_sample=None, llm_dtype="float32", llm_batch_size=64,
                              core_reconstruction_batches=20, core_sparsity_batches=20)
        if name == "tiny":
            return EvalConfig(absorption_word_sample=1000, absorption_probe_epochs=5, absorption_max_k=3,
                              llm_batch_size=64, core_n_docs=64, core_context_length=32, core_batch_size_prompts=4,
                              core_reconstruction_batches=2, core_sparsity_batches=2,
                              sae_probes_datasets=["119_us_state_TX"], sae_probes_ks=[1, 2],
                              sae_probes_max_seq_len=64, sae_probes_llm_baseline=False)
        raise EvalConfigError(f"no eval preset {name!r} (available: demo, pythia70m, tiny)")
