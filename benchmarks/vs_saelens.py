"""Training throughput of our TopK trainer vs SAELens's TopK trainer, side by side in one run.

Both train on the same in-memory activations, with the same SAE shape, k, batch size, learning
rate and token budget; both normalise inputs to E||x||^2 = d_model. Ours is the full loop
(tracker, logs and tracker snapshots included; checkpoints off); SAELens is ``SAETrainer.fit``
with ``TopKTrainingSAE`` (wandb off). Each trainer runs ``--repeats`` times, interleaved, and the faster run of
each is kept, so a busy machine penalises neither (``--threads 1`` is steadier on a shared CPU). Goal: ratio >= 1.5.

    .venv/bin/python benchmarks/vs_saelens.py [--d 640 --m 2048 --k 32 --batch 1024 --tokens 102400]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("WANDB_MODE", "disabled")

from trainers.training.config import TrainConfig  # noqa: E402
from trainers.training.data import InMemoryActivations  # noqa: E402
from trainers.training.export import ModelInfo  # noqa: E402
from trainers.training.loop import train_sae  # noqa: E402


def endless_batches(source: InMemoryActivations, batch: int, seed: int):
    epoch = 0
    while True:
        yield from source.iter_batches(batch, seed=seed, epoch=epoch)
        epoch += 1


def run_ours(source, args, tmp: Path, run: int) -> tuple[float, float]:
    cfg = TrainConfig(trainers=["topk"], seeds=[0], d_sae=args.m, k=args.k, n_tokens=args.tokens,
                      batch_size=args.batch, lr=args.lr, checkpoint_every=0, norm_rows=8192, device="cpu")
    t0, c0 = time.perf_counter(), time.process_time()
    train_sae(source, cfg, "topk", 0, tmp / f"ours_{run}", ModelInfo("bench"), progress=False)
    return time.perf_counter() - t0, time.process_time() - c0


def run_saelens(source, args, sparse: bool) -> tuple[float, float]:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=source.d_model, d_sae=args.m, k=args.k,
                                                normalize_activations="expected_average_only_in",
                                                use_sparse_activations=sparse, device="cpu"))
    cfg = SAETrainerConfig(total_training_samples=args.tokens, train_batch_size_samples=args.batch, lr=args.lr,
                           lr_end=args.lr / 10,
                           lr_warm_up_steps=max(1, args.tokens // args.batch // 20), device="cpu",
                           n_batches_for_norm_estimate=8, logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg, sae, endless_batches(source, args.batch, 0))
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=640)
    ap.add_argument("--m", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=102_400)
    ap.add_argument("--rows", type=int, default=65_536)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--saelens-sparse", action="store_true",
                    help="SAELens use_sparse_activations=True (SAELens 6.54 raises NotImplementedError for "
                         "aten::view on SparseCPU on this machine)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs per trainer; the fastest counts")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    mix_FD = torch.randn(4 * args.d, args.d, generator=gen)
    codes_NF = torch.rand(args.rows, 4 * args.d, generator=gen).pow(8)  # sparse-ish, heavy-tailed
    source = InMemoryActivations(50 * (codes_NF @ mix_FD) / args.d)

    runs: dict[str, list[tuple[float, float]]] = {"ours": [], "saelens": []}
    with tempfile.TemporaryDirectory() as tmp:
        run_ours(source, argparse.Namespace(**{**vars(args), "tokens": 4 * args.batch}), Path(tmp), -1)  # warm-up
        for run in range(args.repeats):
            runs["ours"].append(run_ours(source, args, Path(tmp), run))
            runs["saelens"].append(run_saelens(source, args, args.saelens_sparse))
    print(f"d={args.d} m={args.m} k={args.k} batch={args.batch} tokens={args.tokens}, CPU threads "
          f"{torch.get_num_threads()}, SAELens sparse activations: {args.saelens_sparse}")
    best = {}
    for name, rows in runs.items():
        wall, cpu = min(rows)
        best[name] = (wall, cpu)
        print(f"{name:>8}: {args.tokens / wall:8.0f} tokens/s wall ({wall:.1f} s), cpu {cpu:.1f} s  "
              f"[runs: {', '.join(f'{w:.1f}s' for w, _ in rows)}]")
    print(f"ratio ours / SAELens: {best['saelens'][0] / best['ours'][0]:.2f} (wall), "
          f"{best['saelens'][1] / best['ours'][1]:.2f} (cpu)   goal >= 1.5")


if __name__ == "__main__":
    main()
