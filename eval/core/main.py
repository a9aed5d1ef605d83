"""SAE-Bench's core eval (reconstruction, downstream loss, sparsity) on a local text dataset.

The text comes from the run's own corpus (``pipeline.evaluate`` writes it once per run as a parquet
folder with a ``text`` column and passes it in), so no Hub dataset is needed. The metrics are
computed by sae-bench's ``run_evals``; its SAE-independent clean and ablated forwards are
shared by the SAEs of a process (:mod:`eval.core.reference_forwards`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from eval.core.reference_forwards import shared_reference_forwards
from eval.spec import EvalInputs, EvalOptions, EvalOutput, EvalSpec, register
from fc_base.errors import check


@dataclass
class CoreOptions(EvalOptions):
    section = "core"
    n_docs: int = 2000
    """Documents written from the run's corpus into the local text dataset core eval reads."""
    context_length: int = 128
    """Tokens per sequence."""
    batch_size_prompts: int = 8
    """Sequences per batch."""
    reconstruction_batches: int = 10
    """Batches for the downstream (KL, CE loss) metrics."""
    sparsity_batches: int = 2
    """Batches for the sparsity, variance and shrinkage metrics."""

    def __post_init__(self) -> None:
        for name in ("n_docs", "batch_size_prompts", "reconstruction_batches", "sparsity_batches"):
            value = getattr(self, name)
            check(isinstance(value, int) and value > 0, f"eval.options.core.{name} must be a positive integer, got {value!r}")
        check(self.context_length >= 2, f"eval.options.core.context_length must be >= 2, got {self.context_length}")


def core_config(model_name: str, dataset: Path, opts: CoreOptions, llm_dtype: str):
    from sae_bench.evals.core.main import CoreEvalConfig

    return CoreEvalConfig(
        model_name=model_name, llm_dtype=llm_dtype, batch_size_prompts=opts.batch_size_prompts,
        n_eval_reconstruction_batches=opts.reconstruction_batches,
        n_eval_sparsity_variance_batches=opts.sparsity_batches, dataset=str(dataset),
        context_size=opts.context_length, compute_kl=True, compute_ce_loss=True, compute_l2_norms=True,
        compute_sparsity_metrics=True, compute_variance_metrics=True,
        compute_featurewise_density_statistics=False, compute_featurewise_weight_based_metrics=False,
        exclude_special_tokens_from_reconstruction=True)


def run_core(model, sae, sae_name: str, dataset: Path, opts: CoreOptions, llm_dtype: str) -> dict[str, float]:
    """sae-bench core metrics by their sae-bench names (unique across its categories); NaN stays NaN."""
    from sae_bench.evals.core.main import run_evals
    from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
    from sae_lens.training.activations_store import ActivationsStore

    _, sae, _ = load_and_format_sae(sae_name, sae, str(sae.device))
    sae.cfg.context_size = opts.context_length
    config = core_config(model.cfg.model_name, dataset, opts, llm_dtype)
    store = ActivationsStore.from_sae(model, sae, context_size=opts.context_length, dataset=str(dataset),
                                      store_batch_size_prompts=opts.batch_size_prompts,
                                      device=str(sae.device))
    store.shuffle_input_dataset(seed=42)  # sae-bench's seed for core eval
    tok = model.tokenizer
    with shared_reference_forwards():  # the clean and ablated forwards are the same for every SAE
        metrics, _ = run_evals(sae=sae, activation_store=store, model=model, eval_config=config,
                               ignore_tokens={tok.pad_token_id, tok.eos_token_id, tok.bos_token_id})
    flat: dict[str, float] = {}
    for values in metrics.values():
        for name, value in values.items():
            flat[name] = _scalar(value)
    return flat


def _scalar(value) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.item())
    return float(value)


def run(inputs: EvalInputs, opts: CoreOptions) -> EvalOutput:
    return EvalOutput(run_core(inputs.model, inputs.sae, inputs.meta.name, inputs.text_dataset, opts,
                               inputs.common.llm_dtype), {})


CORE = register(EvalSpec("core", "sae-bench core: reconstruction, CE/KL downstream loss, sparsity (local text)",
                         run, options=CoreOptions, text_docs=lambda opts: opts.n_docs, sae_dtype="llm"))
