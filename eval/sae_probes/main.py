"""SAE-Bench's ``sparse_probing_sae_probes`` eval (its datasets ship inside the sae-probes package).

Model activations of the probing datasets are collected once per run (stopping after the SAE's
layer, texts capped at ``sae_probes_max_seq_len`` tokens) and reused by every SAE; sae-bench's
``run_eval`` then fits the sparse probes and aggregates, with its folders inside the run directory.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from eval.runtime import file_lock
from eval.spec import EvalInputs, EvalOptions, EvalOutput, EvalSpec, register
from fc_base.errors import check

SETTING = "normal"  # the only setting sae-bench aggregates
REG_TYPE = "l1"


@dataclass
class SaeProbesOptions(EvalOptions):
    section = "sae_probes"
    datasets: list[str] = field(default_factory=lambda: ["119_us_state_TX", "5_hist_fig_ismale", "113_movie_sent"])
    """sae-probes datasets (shipped in the sae-probes package)."""
    ks: list[int] = field(default_factory=lambda: [1, 2, 5])
    """Numbers of SAE latents each probe may use."""
    max_seq_len: int = 256
    """Longest text (tokens) fed to the model when collecting activations."""
    llm_baseline: bool = True
    """Also fit sae-probes' logistic-regression baseline on the raw model activations."""

    def __post_init__(self) -> None:
        check(bool(self.datasets), "eval.options.sae_probes.datasets must name at least one dataset")
        check(bool(self.ks) and all(isinstance(k, int) and k > 0 for k in self.ks),
              f"eval.options.sae_probes.ks must be positive integers, got {self.ks}")
        check(isinstance(self.max_seq_len, int) and self.max_seq_len > 0,
              f"eval.options.sae_probes.max_seq_len must be a positive integer, got {self.max_seq_len!r}")


def run_sae_probes(model, sae, sae_name: str, artifacts_dir: Path, opts: SaeProbesOptions, common,
                   model_name: str) -> dict[str, float]:
    """Mean test accuracy/AUC/F1 over datasets per k (sae-bench's names) plus the LLM baseline."""
    from sae_bench.evals.sparse_probing_sae_probes.eval_config import SparseProbingSaeProbesEvalConfig
    from sae_bench.evals.sparse_probing_sae_probes.main import run_eval
    from sae_bench.sae_bench_utils.general_utils import get_results_filepath
    from sae_probes.generate_model_activations import ensure_dataset_activations
    from sae_probes.generate_sae_activations import DATASET_SIZES

    missing = [d for d in opts.datasets if d not in DATASET_SIZES]
    if missing:
        smallest = ", ".join(sorted(DATASET_SIZES, key=DATASET_SIZES.get)[:5])
        raise ValueError(f"sae-probes has no dataset {missing[0]!r} (e.g. {smallest})")
    root = Path(artifacts_dir) / "sae_probes"
    acts_cache = root / f"model_acts_len{opts.max_seq_len}_{common.llm_dtype}"
    with file_lock(root / ".lock"):
        ensure_dataset_activations(
            model_name=model_name, dataset_short_names=list(opts.datasets), hook_names=[sae.cfg.hook_name],
            model_cache_path=acts_cache, device=str(sae.device), max_seq_len=opts.max_seq_len,
            batch_size=common.llm_batch_size, model=model)
    results = root / "results"
    output = root / "outputs"
    # Per-SAE probe results are skipped by sae-probes when present: clear them so a retrained SAE of
    # the same name is measured afresh.
    shutil.rmtree(results / f"{sae_name}_custom_sae", ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    config = SparseProbingSaeProbesEvalConfig(
        model_name=model_name, random_seed=42, dataset_names=list(opts.datasets), reg_type=REG_TYPE,
        setting=SETTING, ks=list(opts.ks), binarize=False, results_path=str(results),
        model_cache_path=str(acts_cache), include_llm_baseline=opts.llm_baseline)
    run_eval(config, [(sae_name, sae)], str(sae.device), str(output), force_rerun=True)
    payload = json.loads(Path(get_results_filepath(str(output), sae_name, "custom_sae")).read_text())
    metrics: dict[str, float] = {}
    for group, values in payload["eval_result_metrics"].items():
        for name, value in (values or {}).items():
            if value is not None:
                metrics[name] = float(value)
    for detail in payload.get("eval_result_details") or []:
        for k in opts.ks:
            value = detail.get(f"sae_top_{k}_test_accuracy")
            if value is not None:
                metrics[f"dataset/{detail['dataset_name']}/sae_top_{k}_test_accuracy"] = float(value)
    if not any(name.startswith("sae_top_") for name in metrics):
        raise RuntimeError(f"sae-probes produced no results for datasets {opts.datasets}")
    return metrics


def run(inputs: EvalInputs, opts: SaeProbesOptions) -> EvalOutput:
    return EvalOutput(run_sae_probes(inputs.model, inputs.sae, inputs.meta.name, inputs.artifacts_dir, opts,
                                     inputs.common, inputs.meta.model_name), {})


SAE_PROBES = register(EvalSpec("sparse_probing_sae_probes", "sae-bench sparse probing on sae-probes' shipped datasets",
                               run, options=SaeProbesOptions))
