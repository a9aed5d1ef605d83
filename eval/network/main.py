"""SAE-Bench evals whose data or API live on the network (scr, tpp, sparse_probing, autointerp,
unlearning, ravel): decided up front, in seconds, whether they can run here; run with sae-bench's
own ``run_eval`` where they can."""
from __future__ import annotations

import importlib
import inspect
import json
import os
import socket
from pathlib import Path

from dataclasses import dataclass
from functools import partial

from eval.spec import EvalInputs, EvalOptions, EvalOutput, EvalSpec, register
from fc_base import online
from fc_base.errors import check

NEEDS = {
    "scr": "the Hugging Face Hub datasets LabHC/bias_in_bios and canrager/amazon_reviews_mcauley_1and5",
    "tpp": "the Hugging Face Hub datasets LabHC/bias_in_bios and canrager/amazon_reviews_mcauley_1and5",
    "sparse_probing": "its Hugging Face Hub datasets (bias_in_bios, amazon reviews, ag_news, europarl, github-code)",
    "autointerp": "an OpenAI API key (OPENAI_API_KEY or openai_api_key.txt) and a Hugging Face Hub text dataset",
    "unlearning": "the WMDP datasets from the Hugging Face Hub and an instruction-tuned model",
    "ravel": "the RAVEL dataset from the Hugging Face Hub",
}
MODULES = {
    "scr": ("sae_bench.evals.scr_and_tpp", "ScrAndTppEvalConfig"),
    "tpp": ("sae_bench.evals.scr_and_tpp", "ScrAndTppEvalConfig"),
    "sparse_probing": ("sae_bench.evals.sparse_probing", "SparseProbingEvalConfig"),
    "autointerp": ("sae_bench.evals.autointerp", "AutoInterpEvalConfig"),
    "unlearning": ("sae_bench.evals.unlearning", "UnlearningEvalConfig"),
    "ravel": ("sae_bench.evals.ravel", "RAVELEvalConfig"),
}


@dataclass
class NetworkOptions(EvalOptions):
    section = "network"
    hub_check_timeout_s: float = 3.0
    """Seconds to wait for the Hugging Face Hub / API endpoints before recording an eval as skipped."""

    def __post_init__(self) -> None:
        check(self.hub_check_timeout_s > 0, "eval.options.network.hub_check_timeout_s must be > 0")


def _reachable(host: str, timeout: float) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def openai_api_key() -> str | None:
    key = os.environ.get("OPENAI_API_KEY", "").strip()
    if key:
        return key
    path = Path("openai_api_key.txt")
    return path.read_text().strip() or None if path.is_file() else None


def unavailable_reason(eval_name: str, common) -> str | None:
    """Why ``eval_name`` cannot run here (None when it can); never waits longer than the timeout."""
    timeout = common.option(NetworkOptions).hub_check_timeout_s
    need = NEEDS[eval_name]
    if eval_name == "autointerp" and openai_api_key() is None:
        return f"needs {need}; no API key is set"
    if not online():
        return f"needs {need}; the Hub is off here (HF_HUB_OFFLINE=1; set FC_SAE_ONLINE=1 where it is reachable)"
    hub = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    if not _reachable(hub, timeout):
        return f"needs {need}; {hub} is unreachable from here"
    if eval_name == "autointerp" and not _reachable("api.openai.com", timeout):
        return f"needs {need}; api.openai.com is unreachable from here"
    return None


def run_network_eval(eval_name: str, sae, sae_name: str, artifacts_dir: Path, common,
                     model_name: str) -> dict[str, float]:
    """Run sae-bench's ``run_eval`` of a network eval and flatten its metrics (``category/metric``)."""
    from sae_bench.sae_bench_utils.general_utils import get_results_filepath

    module_name, config_name = MODULES[eval_name]
    main = importlib.import_module(module_name + ".main")
    config_cls = getattr(importlib.import_module(module_name + ".eval_config"), config_name)
    config = config_cls(model_name=model_name)
    for field, value in (("llm_dtype", common.llm_dtype), ("llm_batch_size", common.llm_batch_size)):
        if hasattr(config, field):
            setattr(config, field, value)
    if eval_name == "tpp":
        config.perform_scr = False
    root = Path(artifacts_dir) / eval_name
    output = root / "outputs"
    output.mkdir(parents=True, exist_ok=True)
    kwargs = {"force_rerun": True}
    params = inspect.signature(main.run_eval).parameters
    if "artifacts_path" in params:
        kwargs["artifacts_path"] = str(root / "artifacts")
    if "api_key" in params:
        kwargs["api_key"] = openai_api_key()
    main.run_eval(config, [(sae_name, sae)], str(sae.device), output_path=str(output), **kwargs)
    payload = json.loads(Path(get_results_filepath(str(output), sae_name, "custom_sae")).read_text())
    metrics: dict[str, float] = {}
    for category, values in payload["eval_result_metrics"].items():
        for name, value in (values or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[f"{category}_{name}"] = float(value)
    if not metrics:
        raise RuntimeError(f"sae-bench {eval_name} wrote no numeric metrics")
    return metrics


def run(eval_name: str, inputs: EvalInputs, opts: NetworkOptions) -> EvalOutput:
    return EvalOutput(run_network_eval(eval_name, inputs.sae, inputs.meta.name, inputs.artifacts_dir, inputs.common,
                                       inputs.meta.model_name), {})


# One spec per sae-bench eval; they share this adapter and its options.
NETWORK_EVALS = tuple(register(EvalSpec(
    name, f"sae-bench {name} (needs the Hub or an API; a skipped row with the reason offline)",
    partial(run, name), options=NetworkOptions, sae_dtype="llm", common_settings=("llm_dtype", "llm_batch_size"),
    unavailable=partial(unavailable_reason, name))) for name in MODULES)
