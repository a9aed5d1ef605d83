"""SAE-Bench's core eval (reconstruction, downstream loss, sparsity) on a local text dataset.

The text comes from the run's own corpus (written once per run as a parquet folder with a ``text``
column), so no Hub dataset is needed.  The metrics are computed by sae-bench's ``run_evals``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from sae_bench.evals.core.main import CoreEvalConfig, run_evals
from sae_bench.sae_bench_utils.general_utils import load_and_format_sae
from sae_lens.training.activations_store import ActivationsStore

from eval.config import EvalConfig
from eval.runtime import file_lock


def ensure_text_dataset(run_dir: Path, corpus_cfg, cfg: EvalConfig) -> Path:
    """The local dataset folder core eval reads (written once per run)."""
    from pipeline.corpus import write_text_dataset

    folder = Path(run_dir) / "eval_artifacts" / "core_text" / f"docs{cfg.core_n_docs}"
    with file_lock(folder.parent / ".lock"):
        if not (folder / "train.parquet").is_file():
            write_text_dataset(corpus_cfg, folder, cfg.core_n_docs)
    return folder


def core_config(model_name: str, dataset: Path, cfg: EvalConfig) -> CoreEvalConfig:
    return CoreEvalConfig(
        model_name=model_name, llm_dtype=cfg.llm_dtype, batch_size_prompts=cfg.core_batch_size_prompts,
        n_eval_reconstruction_batches=cfg.core_reconstruction_batches,
        n_eval_sparsity_variance_batches=cfg.core_sparsity_batches, dataset=str(dataset),
        context_size=cfg.core_context_length, compute_kl=True, compute_ce_loss=True, compute_l2_norms=True,
        compute_sparsity_metrics=True, compute_variance_metrics=True,
        compute_featurewise_density_statistics=False, compute_featurewise_weight_based_metrics=False,
        exclude_special_tokens_from_reconstruction=True)


def run_core(model, sae, sae_name: str, dataset: Path, cfg: EvalConfig) -> dict[str, float]:
    """sae-bench core metrics by their sae-bench names (unique across its categories); NaN stays NaN."""
    _, sae, _ = load_and_format_sae(sae_name, sae, str(sae.device))
    sae.cfg.context_size = cfg.core_context_length
    config = core_config(model.cfg.model_name, dataset, cfg)
    store = ActivationsStore.from_sae(model, sae, context_size=cfg.core_context_length, dataset=str(dataset),
                                      store_batch_size_prompts=cfg.core_batch_size_prompts,
                                      device=str(sae.device))
    store.shuffle_input_dataset(seed=42)  # sae-bench's seed for core eval
    tok = model.tokenizer
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
