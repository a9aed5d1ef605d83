"""Feature absorption on a toy with known hierarchical features, measured against ground truth.

Ground truth: orthonormal feature directions in d dims. Each of G parent features has C children;
a child never fires without its parent (the parent is always on when any child is on), and the
parent also fires alone sometimes. Other features fire independently. An SAE absorbs a parent when
the latent that represents the parent (highest decoder cosine with its direction) stays silent on
inputs where the parent is present together with a child: the child latent has absorbed the
parent's direction.

Absorption rate = mean over parents of P(parent latent silent | parent and one child present).
Printed for each trainer (default: TopK, the seed's FC split and its random control, the three FC v2
repair designs and the controls of the two repair surgeries, BatchTopK, Matryoshka) at the same
width and k, over several seeds.

    .venv/bin/python benchmarks/toy_absorption.py [--seeds 0 1 2] [--tokens 409600]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file


from trainers.training.config import TrainConfig  # noqa: E402
from trainers.training.data import InMemoryActivations  # noqa: E402
from trainers.training.export import ModelInfo  # noqa: E402
from trainers.training.loop import train_sae  # noqa: E402
from trainers.training.registry import get_recipe  # noqa: E402


class Toy(NamedTuple):
    feats_FD: torch.Tensor
    """Unit ground-truth directions."""
    parents: list[int]
    """Feature index of each parent."""
    children: list[list[int]]
    """Feature indices of each parent's children."""


def make_toy(d: int, n_parents: int, n_children: int, n_independent: int, seed: int) -> Toy:
    n_feats = n_parents * (1 + n_children) + n_independent
    if n_feats > d:
        raise ValueError(f"{n_feats} orthogonal features need d >= {n_feats}, got {d}")
    gen = torch.Generator().manual_seed(1000 + seed)
    q_DD, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    parents = [g * (1 + n_children) for g in range(n_parents)]
    children = [[p + 1 + c for c in range(n_children)] for p in parents]
    return Toy(q_DD[:, :n_feats].T.contiguous(), parents, children)


def sample(toy: Toy, n: int, seed: int, p_child: float, p_parent_alone: float, p_independent: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations (n, d) and the ground-truth feature magnitudes (n, F)."""
    rng = np.random.default_rng(seed)
    n_feats = toy.feats_FD.shape[0]
    on_NF = np.zeros((n, n_feats), dtype=bool)
    for parent, kids in zip(toy.parents, toy.children):
        u_N = rng.random(n)
        with_child_N = u_N < p_child
        alone_N = (u_N >= p_child) & (u_N < p_child + p_parent_alone)
        which_N = rng.integers(0, len(kids), n)
        on_NF[:, parent] = with_child_N | alone_N
        on_NF[np.nonzero(with_child_N)[0], np.array(kids)[which_N[with_child_N]]] = True
    hierarchical = set(toy.parents) | {c for kids in toy.children for c in kids}
    independent = [f for f in range(n_feats) if f not in hierarchical]
    on_NF[:, independent] = rng.random((n, len(independent))) < p_independent
    mags_NF = on_NF * rng.uniform(0.5, 1.5, size=(n, n_feats))
    mags_NF = torch.from_numpy(mags_NF.astype(np.float32))
    return mags_NF @ toy.feats_FD, mags_NF


def absorption_rate(weights: dict[str, torch.Tensor], arch: str, k: int, toy: Toy, x_ND: torch.Tensor,
                    mags_NF: torch.Tensor) -> tuple[float, float]:
    """(absorption rate, parent-alone recall) of one exported SAE (raw-activation weights)."""
    pre_NM = (x_ND - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    if arch == "topk":
        post_NM = pre_NM.relu()
        vals, idx = post_NM.topk(k, dim=1)
        acts_NM = torch.zeros_like(post_NM).scatter_(1, idx, vals)
    elif arch == "jumprelu":
        acts_NM = pre_NM * (pre_NM > weights["threshold"])
    else:
        acts_NM = pre_NM.relu()
    dec_MD = weights["W_dec"] / weights["W_dec"].norm(dim=1, keepdim=True)
    rates, recalls = [], []
    for parent, kids in zip(toy.parents, toy.children):
        latent = int((dec_MD @ toy.feats_FD[parent]).argmax())
        fires_N = acts_NM[:, latent] > 0
        with_child_N = (mags_NF[:, parent] > 0) & (mags_NF[:, kids] > 0).any(1)
        alone_N = (mags_NF[:, parent] > 0) & ~(mags_NF[:, kids] > 0).any(1)
        rates.append(float((~fires_N[with_child_N]).float().mean()))
        recalls.append(float(fires_N[alone_N].float().mean()))
    return float(np.mean(rates)), float(np.mean(recalls))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trainers", nargs="+", default=["topk", "fc_topk", "random_split_topk", "fc2_topk",
                                                       "fc2enc_topk", "fc2sup_topk", "random_repair_topk",
                                                       "random_repair_enc_topk", "batchtopk", "matryoshka"])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--parents", type=int, default=6)
    ap.add_argument("--children", type=int, default=4)
    ap.add_argument("--independent", type=int, default=20)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=409_600)
    ap.add_argument("--rows", type=int, default=131_072)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny matrices: 1 avoids sync costs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"toy: d={args.d}, {args.parents} parents x {args.children} children, {args.independent} independent; "
          f"SAE width {args.width}, k {args.k}, {args.tokens} training tokens; seeds {args.seeds}")
    results: dict[str, list[tuple[float, float, float]]] = {t: [] for t in args.trainers}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            toy = make_toy(args.d, args.parents, args.children, args.independent, seed)
            x_ND, _ = sample(toy, args.rows, seed, p_child=0.15, p_parent_alone=0.05, p_independent=0.03)
            x_eval, mags_eval = sample(toy, 32768, seed + 10_000, p_child=0.15, p_parent_alone=0.05,
                                       p_independent=0.03)
            source = InMemoryActivations(x_ND)
            for trainer in args.trainers:
                cfg = TrainConfig(trainers=[trainer], seeds=[seed], d_sae=args.width, k=args.k,
                                  n_tokens=args.tokens, batch_size=512, lr=2e-3, resample_every=50,
                                  dead_after_tokens=50_000, checkpoint_every=0,
                                  reservoir_rows=8192, norm_rows=8192,
                                  options={"fc": {"max_split_frac": 0.05},
                                           "matryoshka": {"group_fractions": [0.125, 0.125, 0.25, 0.5]}})
                out = Path(tmp) / f"{trainer}_s{seed}"
                t0 = time.time()
                res = train_sae(source, cfg, trainer, seed, out, ModelInfo("toy"), progress=False)
                weights = load_file(out / "sae_weights.safetensors")
                # BatchTopK-style SAEs export a per-latent threshold; penalty-trained ones are plain ReLU
                arch = ("jumprelu" if "threshold" in weights else
                        "relu" if get_recipe(trainer).sparsity == "penalty" else "topk")
                rate, recall = absorption_rate(weights, arch, args.k, toy, x_eval, mags_eval)
                ev = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])["explained_variance"]
                results[trainer].append((rate, recall, ev))
                print(f"  seed {seed} {trainer:>10}: absorption {rate:.3f}  parent-alone recall {recall:.3f}  EV {ev:.3f}  "
                      f"splits {res.events["splits"]:3d}  ({time.time() - t0:.1f} s)", flush=True)

    print("\ntrainer       absorption rate (mean +- std over seeds)   parent-alone recall   explained variance")
    for trainer, rows in results.items():
        rates, recalls, evs = (np.array(col) for col in zip(*rows))
        print(f"{trainer:<12}  {rates.mean():.3f} +- {rates.std():.3f}  [{', '.join(f'{r:.3f}' for r in rates)}]"
              f"        {recalls.mean():.3f} +- {recalls.std():.3f}       {evs.mean():.3f} +- {evs.std():.3f}")


if __name__ == "__main__":
    main()
