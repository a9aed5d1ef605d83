"""What the absorption eval's word sample buys: its own noise (spread over k-sparse-probe seeds) and its
cost, at several word-sample sizes, on one trained SAE of a run.

    .venv/bin/python benchmarks/absorption_words.py --run-dir runs/experiment --sae topk_k32_s0 \
        --words 8000 16000 32000 --probe-seeds 5

For each size it builds (or reuses, under the run's eval_artifacts/) the ground-truth probe and the
shared prompt activations, then runs sae-bench's k-sparse probing + absorption calculator once per
probe seed. It prints, side by side: letters passing the probe rule, one-time cost (probe + prompt
forwards, shared by every SAE of a run), per-SAE cost, the mean metrics and their std over probe seeds
(the eval noise one SAE's number carries; averaging n seeds divides it by sqrt(n)).
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import pipeline  # noqa: F401  (offline environment first)
from run_sae import add_run_sae_args, load_run_sae

METRICS = ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features")


def main() -> None:
    from eval.absorption.main import AbsorptionOptions, ensure_probe, run_absorption

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_sae_args(ap)
    ap.add_argument("--words", type=int, nargs="+", default=[8000, 16000, 32000])
    ap.add_argument("--probe-seeds", type=int, default=5)
    args = ap.parse_args()

    run_dir, cfg, meta, model, sae = load_run_sae(args)

    base = cfg.eval.option(AbsorptionOptions)
    rows = []
    for words in args.words:
        opts = replace(base, word_sample=words, probe_seeds=1)
        t0 = time.monotonic()
        probe = ensure_probe(model, meta.layer, run_dir / "eval_artifacts", opts, cfg.eval)
        t_probe = time.monotonic() - t0
        per_seed, seconds = [], []
        for seed in range(args.probe_seeds):
            # one probe seed at a time, so the first (which also runs the shared prompts) is timed apart
            t1 = time.monotonic()
            metrics, _ = run_absorption(model, sae, args.sae, probe, opts, cfg.eval.llm_batch_size, probe_seeds=[seed])
            seconds.append(time.monotonic() - t1)
            per_seed.append(metrics)
        passing = sum(f1 > opts.min_probe_f1 for f1 in probe.probe_f1_by_letter.values())
        row = {"words": words, "letters": passing, "probe_s": t_probe, "first_seed_s": seconds[0],
               "seed_s": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]}
        for m in METRICS:
            values = [p[m] for p in per_seed]
            row[m] = statistics.mean(values)
            row[m + "_std"] = statistics.stdev(values) if len(values) > 1 else float("nan")
        rows.append(row)
        _print(rows, args)


def _print(rows: list[dict], args) -> None:
    print(f"\nSAE {args.sae}, {args.probe_seeds} k-sparse-probe seeds per word sample")
    print("| words | letters passing | probe + prompts, once per run (s) | per SAE and probe seed (s) | "
          + " | ".join(f"{m} (std over probe seeds)" for m in METRICS) + " |")
    print("|---|---|---|---|" + "---|" * len(METRICS))
    for r in rows:
        once = r["probe_s"] + r["first_seed_s"] - r["seed_s"]
        print(f"| {r['words']} | {r['letters']} | {once:.0f} | {r['seed_s']:.0f} | "
              + " | ".join(f"{r[m]:.3f} ± {r[m + '_std']:.3f}" for m in METRICS) + " |")
    if len(rows) > 1:
        ref = rows[0]
        for r in rows[1:]:
            ratio = r["mean_absorption_fraction_score_std"] / ref["mean_absorption_fraction_score_std"]
            print(f"{r['words']} vs {ref['words']} words: absorption-fraction eval noise x{ratio:.2f}, "
                  f"per-SAE time x{r['seed_s'] / ref['seed_s']:.2f}")


if __name__ == "__main__":
    main()
