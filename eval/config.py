"""Evaluation configuration: which evals run, the settings they share, and each eval's own options
(``eval.options.<section>``, defined beside the eval in its module; ``fc-sae eval --help`` lists
the evals)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fc_base.errors import ConfigError
from fc_base.errors import check as _check
from fc_base.options import resolve_sections, upgrade_legacy
from eval.spec import build_options, eval_names, option_sections
from fc_base.torch_utils import DTYPES

EvalConfigError = ConfigError  # the name older code and tests catch

# Flat fields of earlier configs -> (option section, field); old config.json files still load.
LEGACY_FIELDS = {
    "absorption_word_sample": ("absorption", "word_sample"), "word_sample_seed": ("absorption", "word_sample_seed"),
    "absorption_max_k": ("absorption", "max_k"), "absorption_probe_epochs": ("absorption", "probe_epochs"),
    "absorption_min_probe_f1": ("absorption", "min_probe_f1"), "absorption_min_letters": ("absorption", "min_letters"),
    "core_n_docs": ("core", "n_docs"), "core_context_length": ("core", "context_length"),
    "core_batch_size_prompts": ("core", "batch_size_prompts"),
    "core_reconstruction_batches": ("core", "reconstruction_batches"),
    "core_sparsity_batches": ("core", "sparsity_batches"),
    "sae_probes_datasets": ("sae_probes", "datasets"), "sae_probes_ks": ("sae_probes", "ks"),
    "sae_probes_max_seq_len": ("sae_probes", "max_seq_len"), "sae_probes_llm_baseline": ("sae_probes", "llm_baseline"),
    "hub_check_timeout_s": ("network", "hub_check_timeout_s"),
}


@dataclass
class EvalConfig:
    evals: list[str] = field(default_factory=lambda: ["absorption", "core"])
    """Evals to run for every SAE (``fc-sae eval --help`` lists them)."""
    llm_dtype: str = "float32"
    """Dtype of the language model inside the evals (float32, bfloat16, float16); SAEs run in it too."""
    device: str = "auto"
    """Device for evals: auto (cuda if available, else cpu), cpu, cuda, cuda:N."""
    llm_batch_size: int = 32
    """Prompts per language-model forward in absorption and sae-probes activation collection."""
    options: dict[str, Any] = field(default_factory=dict)
    """Each eval's own options by section (absorption, core, sae_probes, network, ...); missing
    fields take their defaults (``fc-sae config show`` prints them all)."""

    def __post_init__(self) -> None:
        known = eval_names()
        _check(isinstance(self.evals, list), "eval.evals must be a list of eval names")
        bad = [e for e in self.evals if e not in known]
        _check(not bad, f"eval.evals: unknown eval {bad[0]!r} (allowed: {', '.join(known)})" if bad else "")
        _check(len(set(self.evals)) == len(self.evals), f"eval.evals lists an eval twice: {self.evals}")
        _check(self.llm_dtype in DTYPES, f"eval.llm_dtype must be one of {', '.join(DTYPES)}, got {self.llm_dtype!r}")
        _check(bool(self.device.strip()), "eval.device must not be empty")
        _check(isinstance(self.llm_batch_size, int) and self.llm_batch_size > 0,
               f"eval.llm_batch_size must be a positive integer, got {self.llm_batch_size!r}")
        self.options = resolve_sections("eval", option_sections(), self.options)

    def option(self, cls: type) -> Any:
        """The option group ``cls`` (an eval's options dataclass) of this config."""
        return build_options(cls.section, self.options.get(cls.section, {}))

    @classmethod
    def upgrade_legacy(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Move the flat per-eval fields of earlier config files into ``options``."""
        return upgrade_legacy(data, LEGACY_FIELDS)

