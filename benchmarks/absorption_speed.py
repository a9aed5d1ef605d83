"""The absorption eval's per-SAE cost: sae-bench's own k-sparse probing path against the project's
(eval.absorption.k_sparse scoring and F1, probe batches gathered at once), side by side on one trained SAE,
with a check that both give the same per-letter numbers.

    .venv/bin/python benchmarks/absorption_speed.py --run-dir runs/experiment --sae topk_k32_s0 --probe-seeds 3

Per probe seed, the reference path is what the eval ran before: sae-bench's
``run_k_sparse_probing_experiment`` (one row and one probe at a time, sklearn metrics, parquet files)
fed by torch's DataLoader, then ``load_and_run_calculate_projections_and_cos_sims``; the project's
path is ``eval.absorption.main._absorption_one_probe_seed``. The shared probe and prompt activations must
already exist under the run's eval_artifacts/ (any finished absorption eval of the run built them),
so neither path pays for them.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pipeline  # noqa: F401  (offline environment first)
from run_sae import add_run_sae_args, load_run_sae


def sae_bench_path(model, sae, sae_name: str, probe, opts, llm_batch_size: int, probe_seed: int, out_dir: Path):
    """sae-bench's k-sparse probing and calculator for one probe seed, per-letter rows as the eval keeps them."""
    from sae_bench.evals.absorption import feature_absorption as fa
    from sae_bench.evals.absorption.k_sparse_probing import run_k_sparse_probing_experiment
    from sae_bench.evals.absorption.main import _aggregate_results_df

    from eval.absorption import main as ab
    from eval.runtime import file_lock, private_sae_bench_rng, stop_after_layer

    layer = probe.layer
    precalc = int(len(probe.words) * 0.8) * sae.cfg.d_sae * 4 < 2 * 1024**3
    with private_sae_bench_rng(1000 + probe_seed), stop_after_layer(model, layer):
        metrics_df = run_k_sparse_probing_experiment(
            model=model, sae=sae, layer=layer, sae_name=sae_name, max_k_value=opts.max_k,
            prompt_template=ab.TEMPLATE, prompt_token_pos=probe.token_pos, device=str(sae.device),
            experiment_dir=out_dir, probes_dir=probe.probes_dir, force=True, f1_jump_threshold=ab.F1_JUMP_THRESHOLD,
            k_sparse_probe_l1_decay=ab.L1_DECAY, k_sparse_probe_num_epochs=opts.probe_epochs,
            precalc_k_sparse_probe_sae_acts=precalc, verbose=False)
    with private_sae_bench_rng(opts.word_sample_seed + 1), file_lock(probe.root / ".prompts.lock"):
        prompt_model = ab.SharedPromptActivations(model, layer, probe.token_pos, probe.root / "prompt_acts.pt")
        calculator = ab.absorption_calculator(prompt_model, probe, llm_batch_size)
        raw_df = fa.load_and_run_calculate_projections_and_cos_sims(
            prompt_model, sae, calculator, metrics_df, sae_name=sae_name, layer=layer, probes_dir=probe.probes_dir,
            sparse_probing_task_output_dir=out_dir / sae_name, device=str(sae.device))
    agg = _aggregate_results_df(raw_df).set_index("letter")
    f1 = metrics_df.set_index("letter")["f1_probe"]
    return {letter: (float(f1[letter]), float(agg.loc[letter, "mean_absorption_fraction"]),
                     float(agg.loc[letter, "full_absorption_rate"]), int(agg.loc[letter, "num_split_feats"]))
            for letter in agg.index}


def main() -> None:
    import torch
    from torch.utils.data import DataLoader

    from eval.absorption import main as ab
    from eval import runtime

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_sae_args(ap)
    ap.add_argument("--probe-seeds", type=int, default=3)
    args = ap.parse_args()

    run_dir, cfg, meta, model, sae = load_run_sae(args)
    opts = cfg.eval.option(ab.AbsorptionOptions)
    probe = ab.ensure_probe(model, meta.layer, run_dir / "eval_artifacts", opts, cfg.eval)
    if not (probe.root / "prompt_acts.pt").is_file():
        raise SystemExit(f"error: no shared prompt activations under {probe.root}: run one absorption eval first")

    ref_s = ours_s = 0.0
    same = True
    for seed in range(args.probe_seeds):
        original = runtime.batched_loader
        runtime.batched_loader = DataLoader  # sae-bench's rows fetched and stacked one by one
        try:
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                ref = sae_bench_path(model, sae, meta.name, probe, opts, cfg.eval.llm_batch_size, seed, Path(tmp))
                ref_s += time.perf_counter() - start
        finally:
            runtime.batched_loader = original
        start = time.perf_counter()
        letters, _, _ = ab._absorption_one_probe_seed(model, sae, meta.name, probe, opts, cfg.eval.llm_batch_size, seed)
        ours_s += time.perf_counter() - start
        ours = {r["letter"]: (r["probe_f1"], r["absorption_fraction"], r["full_absorption_rate"],
                              r["num_split_features"]) for r in letters if r["letter"] in ref}
        seed_same = ours == ref
        same &= seed_same
        print(f"probe seed {seed}: per-letter numbers identical: {seed_same}")
    n = args.probe_seeds
    print(f"{meta.name}, {n} probe seed(s), {torch.get_num_threads()} torch threads: sae-bench path {ref_s / n:.1f} s per seed, "
          f"project path {ours_s / n:.1f} s per seed, ratio {ref_s / ours_s:.2f}x; identical: {same}")


if __name__ == "__main__":
    main()
