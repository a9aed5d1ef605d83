"""Convergence curve on a synthetic model: F1, MCC, explained variance and hierarchy absorption of
our TopK, BatchTopK and Matryoshka trainers against the number of training samples (each budget a
full schedule: warm-up, constant, linear decay), on one activation sample held in memory.

This is how the ``synth`` preset's sizes were chosen (the published ordering, Matryoshka's F1 above
BatchTopK's and its absorption below, must have appeared). Example (about 12 minutes on 2 CPU cores):

    .venv/bin/python benchmarks/synth_convergence.py --model synth/1k-64 --width 256 --k 6 \\
        --samples 4000000 12000000 24000000 --matryoshka-fractions 0.125 0.125 0.25 0.5
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import pipeline  # noqa: F401  (environment first)
from eval.sae import load_sae
from eval.synthetic.main import SyntheticOptions, hierarchy_metrics, saelens_metrics
from pipeline.synthetic_models import load_synthetic_model, sample_batches
from trainers.training.config import TrainConfig
from trainers.training.data import InMemoryActivations
from trainers.training.export import ModelInfo
from trainers.training.loop import train_sae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="synth/1k-64")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--rows", type=int, default=2_000_000, help="training rows held in memory (epochs reuse them)")
    ap.add_argument("--samples", type=int, nargs="+", default=[4_000_000, 12_000_000, 24_000_000])
    ap.add_argument("--trainers", nargs="+", default=["topk", "batchtopk", "matryoshka"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--matryoshka-fractions", type=float, nargs="+", default=None,
                    help="Matryoshka group sizes as fractions of the width (default: the recipe's)")
    args = ap.parse_args()

    model = load_synthetic_model(args.model)
    train_ND = torch.cat([a for a, _ in sample_batches(model, args.rows, 16384, 1)])
    heldout = list(sample_batches(model, 20_000, 16384, SyntheticOptions.seed))
    held_ND, held_NF = torch.cat([a for a, _ in heldout]), torch.cat([f for _, f in heldout])
    source = InMemoryActivations(train_ND)
    print(f"{args.model}, width {args.width}, k {args.k}, {args.rows} rows in memory, seed {args.seed}")
    print(f"{'trainer':12s} {'samples':>10s} {'s':>6s} {'f1':>6s} {'mcc':>6s} {'ev':>6s} {'l0':>5s} "
          f"{'absorb':>6s} {'depth0':>6s} {'depth1':>6s} {'decoder':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        for samples in args.samples:
            for trainer in args.trainers:
                cfg = TrainConfig(trainers=[trainer], seeds=[args.seed], d_sae=args.width, k=args.k, n_tokens=samples,
                                  batch_size=1024, lr=args.lr, checkpoint_every=0, norm_rows=16384,
                                  dead_after_tokens=1_000_000, log_every=100, snapshot_every=1000, device="cpu",
                                  options={"matryoshka": {"group_fractions": args.matryoshka_fractions}}
                                  if args.matryoshka_fractions else {})
                out = Path(tmp) / f"{trainer}_{samples}"
                t0 = time.perf_counter()
                train_sae(source, cfg, trainer, args.seed, out, ModelInfo(args.model), progress=False)
                secs = time.perf_counter() - t0
                m = saelens_metrics(model, out, SyntheticOptions(n_rows=50_000))
                h, _ = hierarchy_metrics(model, load_sae(out), held_ND, held_NF, 4096)
                print(f"{trainer:12s} {samples:10d} {secs:6.0f} {m['f1']:6.3f} {m['mcc']:6.3f} "
                      f"{m['explained_variance']:6.3f} {m['l0']:5.2f} {h['absorption_rate']:6.3f} "
                      f"{h.get('absorption_rate/depth0', float('nan')):6.3f} "
                      f"{h.get('absorption_rate/depth1', float('nan')):6.3f} {h['decoder_absorption']:7.3f}", flush=True)


if __name__ == "__main__":
    main()
