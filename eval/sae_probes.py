"""SAE-Bench's ``sparse_probing_sae_probes`` eval (its datasets ship inside the sae-probes package).

Model activations of the probing datasets are collected once per run (stopping after the SAE's
layer, texts capped at ``sae_probes_max_seq_len`` tokens) and reused by every SAE; sae-bench's
``run_eval`` then fits the sparse probes and aggregates, with its folders inside the run directory.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from eval.config import EvalConfig
from eval.runtime import file_lock

SETTING = "normal"  # the only setting sae-bench aggregates
REG_TYPE = "l1"


def run_sae_probes(model, sae, sae_name: str, run_dir: Path, cfg: EvalConfig, model_name: str) -> dict[str, float]:
    """Mean test accuracy/AUC/F1 over datasets per k (sae-bench's names) plus the LLM baseline."""
    from sae_bench.evals.sparse_probing_sae_probes.eval_config import SparseProbingSaeProbesEvalConfig
    from sae_bench.evals.sparse_probing_sae_probes.main import run_eval
    from sae_bench.sae_bench_utils.general_utils import get_results_filepath
    from sae_probes.generate_model_activations import ensure_dataset_activations
    from sae_probes.generate_sae_activations import DATASET_SIZES

    missing = [d for d in cfg.sae_probes_datasets if d not in DATASET_SIZES]
    if missing:
        smallest = ", ".join(sorted(DATASET_SIZES, key=DATASET_SIZES.get)[:5])
        raise ValueError(f"sae-probes has no dataset {missing[0]!r} (e.g. {smallest})")
    root = Path(run_dir) / "eval_artifacts" / "sae_probes"
    acts_cache = root / f"model_acts_len{cfg.sae_probes_max_seq_len}_{cfg.llm_dtype}"
    with file_lock(root / ".lock"):
        ensure_dataset_activations(
            model_name=model_name, dataset_short_names=list(cfg.sae_probes_datasets), hook_names=[sae.cfg.hook_name],
            model_cache_path=acts_cache, device=str(sae.device), max_seq_len=cfg.sae_probes_max_seq_len,
            batch_size=cfg.llm_batch_size, model=model)
    results = root / "results"
    output = root / "outputs"
    # Per-SAE probe results are skipped by sae-probes when present: clear them so a retrained SAE of
    # the same name is measured afresh.
    shutil.rmtree(results / f"{sae_name}_custom_sae", ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    config = SparseProbingSaeProbesEvalConfig(
        model_name=model_name, random_seed=42, dataset_names=list(cfg.sae_probes_datasets), reg_type=REG_TYPE,
        setting=SETTING, ks=list(cfg.sae_probes_ks), binarize=False, results_path=str(results),
        model_cache_path=str(acts_cache), include_llm_baseline=cfg.sae_probes_llm_baseline)
    run_eval(config, [(sae_name, sae)], str(sae.device), str(output), force_rerun=True)
    payload = json.loads(Path(get_results_filepath(str(output), sae_name, "custom_sae")).read_text())
    metrics: dict[str, float] = {}
    for group, values in payload["eval_result_metrics"].items():
        for name, value in (values or {}).items():
            if value is not None:
                metrics[name] = float(value)
    for detail in payload.get("eval_result_details") or []:
        for k in cfg.sae_probes_ks:
            value = detail.get(f"sae_top_{k}_test_accuracy")
            if value is not None:
                metrics[f"dataset/{detail['dataset_name']}/sae_top_{k}_test_accuracy"] = float(value)
    if not any(name.startswith("sae_top_") for name in metrics):
        raise RuntimeError(f"sae-probes produced no results for datasets {cfg.sae_probes_datasets}")
    return metrics
