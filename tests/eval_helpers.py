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


def write_training_artifacts(sae_dir: Path, *, seed: int, with_splits: bool) -> None:
    """Training artifacts in the trainers' format (train_log.jsonl, fc_history.parquet, splits.parquet)."""
    import json

    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    steps = np.arange(0, 100, 10)
    log = [{"step": int(s), "tokens": int(s) * 256, "loss": float(1 / (s + 1)), "mse": float(0.5 / (s + 1)),
            "aux_loss": 0.0, "l0": 8.0, "frac_alive": 0.9, "explained_variance": float(s / 100), "lr": 4e-4}
           for s in steps]
    (sae_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    n_latents = 128
    hist = pd.DataFrame({
        "step": np.repeat(steps[-3:], n_latents), "latent": np.tile(np.arange(n_latents), 3),
        "frequency": rng.uniform(0, 0.2, 3 * n_latents), "consistency": rng.uniform(0, 1, 3 * n_latents)})
    hist["absorption_score"] = hist["frequency"] * (1 - hist["consistency"])
    hist.to_parquet(sae_dir / "fc_history.parquet", index=False)
    if with_splits:
        pd.DataFrame({"step": [20, 20, 50], "latent": [1, 2, 3], "slot": [100, 101, 102], "score": [0.1] * 3,
                      "frequency": [0.1] * 3, "consistency": [0.2] * 3, "cosine": [0.3] * 3}).to_parquet(
            sae_dir / "splits.parquet", index=False)
