"""Shared setup of the eval tests: a run directory with random-weight SAE folders on the tiny model,
evaluated once per test session with the real sae-bench code."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

TINY = "EleutherAI/pythia-14m"
SAE_SPECS = (  # (folder name, trainer, seed, architecture, input scale folded into the weights)
    ("topk_s0", "topk", 0, "topk", 1.0),
    ("topk_s1", "topk", 1, "topk", 1.0),
    ("fc_topk_s0", "fc_topk", 0, "topk", 3.0),
)
EVALS = ["absorption", "core", "sparse_probing_sae_probes", "scr"]


def tiny_config():
    from pipeline.config import get_preset

    return get_preset("tiny")


def make_run(run_dir: Path, specs=SAE_SPECS, d_sae: int = 128) -> Path:
    from eval.random_sae import write_random_sae

    cfg = tiny_config()
    for name, trainer, seed, arch, scale in specs:
        write_random_sae(run_dir / "saes" / name, trainer=trainer, seed=seed, d_in=64, d_sae=d_sae,
                         model_name=TINY, layer=cfg.model.layer, architecture=arch, k=8,
                         model_source="tiny-random", input_scale=scale)
    return run_dir


@functools.lru_cache(maxsize=None)
def evaluated_run() -> Path:
    """A run evaluated once per session: absorption, core and sae-probes on every SAE, scr skipped."""
    from pipeline.evaluate import evaluate

    run_dir = make_run(Path(tempfile.mkdtemp(prefix="fc-sae-eval-run-")) / "run")
    evaluate(tiny_config(), run_dir, evals=EVALS)
    return run_dir
