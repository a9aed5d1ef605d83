"""Time the demo preset's evals: absorption + core on 4 random-weight SAEs (TopK and FC-TopK, 2 seeds)
of the demo model's width and sparsity, and report whether absorption passes sae-bench's rule.

    .venv/bin/python benchmarks/eval_demo_timing.py [RUN_DIR] [--words N] [--layer L]

The eval cost depends on shapes (d_in, d_sae, k, word sample), not on what the weights learned, so
random SAEs give the timing of a real run; the probe/LLM activations are shared by all 4 SAEs.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pipeline  # noqa: F401


def main() -> None:
    from eval.random_sae import write_random_sae
    from pipeline.config import apply_overrides, get_preset
    from pipeline.evaluate import evaluate

    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", nargs="?", default=None)
    ap.add_argument("--words", type=int, default=None, help="absorption word sample (default: the preset's)")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--evals", nargs="+", default=["absorption", "core"])
    args = ap.parse_args()
    cfg = get_preset("demo")
    overrides = []
    if args.words:
        overrides.append(f"eval.options.absorption.word_sample={args.words}")
    if args.layer is not None:
        overrides.append(f"model.layer={args.layer}")
        overrides.append(f"model.hook=blocks.{args.layer}.hook_resid_post")
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="fc-sae-eval-demo-"))
    from pipeline.models import ensure_model

    ensure_model(cfg.model.name, source=cfg.model.source)
    d_in = 640  # Gemma-3-270m residual width
    for trainer in ("topk", "fc_topk"):
        for seed in (0, 1):
            write_random_sae(run_dir / "saes" / f"{trainer}_s{seed}", trainer=trainer, seed=seed, d_in=d_in,
                             d_sae=cfg.train.d_sae, k=cfg.train.k, model_name=cfg.model.name,
                             layer=cfg.model.layer, model_source=cfg.model.source)
    start = time.monotonic()
    evaluate(cfg, run_dir, evals=args.evals)
    total = time.monotonic() - start
    print(f"run dir: {run_dir}")
    print(f"model {cfg.model.name} layer {cfg.model.layer}, words {cfg.eval.options['absorption']['word_sample']}, "
          f"llm dtype {cfg.eval.llm_dtype}, d_sae {cfg.train.d_sae}, k {cfg.train.k}")
    for path in sorted((run_dir / "eval").glob("*/*.json")):
        task = json.loads(path.read_text())
        row = task["rows"][0]
        print(f"{path.parent.name:12s} {path.stem:12s} {row['status']:8s} "
              f"{task['details'].get('seconds', 0):7.1f} s  {row['error'][:160]}")
    min_f1 = cfg.eval.options["absorption"]["min_probe_f1"]
    f1_files = list((run_dir / "eval_artifacts" / "absorption").glob("*/probe_f1.json"))
    for f1_file in f1_files:
        f1 = json.loads(f1_file.read_text())
        passing = sorted(l for l, v in f1.items() if v > min_f1)
        weak = {l: round(v, 2) for l, v in f1.items() if v <= min_f1}
        print(f"letters with probe F1 > {min_f1}: {len(passing)}/26; failing: {weak}")
    print(f"total eval time for 4 SAEs: {total:.0f} s")


if __name__ == "__main__":
    main()
