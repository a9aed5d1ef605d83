"""How selective the two halves of a split latent are right after the split, on real activations.

Takes a trained SAE of a run and the first rows of its cache, picks latents firing on 1-10% of the
rows (the range the experiment's guarded split draws from), splits each with the library's rule
(trainers.fc.splitting: the halves share the parent's encoder, pushed apart along the whitened direction
between their patterns) and, for comparison, with the earlier rule (each half's encoder along its
pattern's mean direction: the kept half at the parent's norm and bias, the new one at 0.2x the mean
living norm and zero bias). For each half it prints how often it would clear the row's TopK threshold
(the k-th largest pre-activation of the unsplit SAE), as a multiple of the parent's own rate.

    .venv/bin/python benchmarks/split_surgery.py --run-dir runs/experiment --sae topk_k32_s0
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import pipeline  # noqa: F401  (offline environment first)


def main() -> None:
    from cache_tools import open_store
    from eval.sae import load_weights
    from fc_base.sae_folder import SAEMeta
    from trainers.fc.splitting import encode_reservoir, split_halves
    from trainers.saes.topk import TopKSAE
    from trainers.training.surgery import RESAMPLED_ENCODER_SCALE

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--sae", required=True, help="a TopK SAE folder under RUN_DIR/saes")
    ap.add_argument("--rows", type=int, default=8192, help="cache rows (the experiment's reservoir size)")
    ap.add_argument("--latents", type=int, default=32, help="how many latents to split")
    args = ap.parse_args()
    torch.set_num_threads(2)

    folder = args.run_dir / "saes" / args.sae
    meta = SAEMeta.read(folder)
    if meta.k is None:
        raise SystemExit(f"{folder}: not a TopK-style SAE (sae_meta.json has no k)")
    w = load_weights(folder, meta)
    model = TopKSAE(meta.d_in, meta.d_sae, meta.k)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(model, name).copy_(w[name])
    x_RD = torch.from_numpy(np.asarray(open_store(args.run_dir / "cache").read_rows(0, args.rows), np.float32))

    with torch.no_grad():
        pre_RM = model.pre_acts(x_RD)
        thr_R1 = pre_RM.topk(model.k, dim=1).values[:, -1:].clamp_min(0)
        fires_RM = pre_RM >= thr_R1
        freq_M = fires_RM.float().mean(0)
        pool = torch.nonzero((freq_M > 0.01) & (freq_M <= 0.1)).squeeze(1)
        cands_C = pool[torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(0))[:args.latents]]
        codes = encode_reservoir(model, x_RD, cands_C, 0.0)
        halves = split_halves(model, x_RD, model.b_dec, cands_C, codes, min_rows=8)
        lat = torch.tensor(halves.latents)
        parent = freq_M[lat]
        xc_RD = x_RD - model.b_dec

        def rate(enc_LD: torch.Tensor, b_L: torch.Tensor) -> torch.Tensor:
            return ((xc_RD @ enc_LD.T + b_L) >= thr_R1).float().mean(0) / parent

        new = torch.stack([rate(halves.keep_enc_LD, halves.half_bias_L), rate(halves.other_enc_LD, halves.half_bias_L)])
        living = model.W_enc.norm(dim=0)[freq_M > 0].mean()
        old_keep = rate(halves.keep_dec_LD * model.W_enc[:, lat].norm(dim=0)[:, None], model.b_enc[lat])
        old_slot = rate(halves.other_dec_LD * RESAMPLED_ENCODER_SCALE * living, torch.zeros(len(lat)))
        old = torch.stack([old_keep, old_slot])

    def show(label: str, r_2L: torch.Tensor) -> None:
        q = torch.quantile(r_2L.flatten(), torch.tensor([0.0, 0.5, 1.0])).tolist()
        print(f"{label:44s} kept/slot median {r_2L[0].median():6.2f} / {r_2L[1].median():6.2f}   "
              f"all halves min {q[0]:.2f} median {q[1]:.2f} max {q[2]:.2f}; "
              f"above 2x {float((r_2L > 2).float().mean()):.0%}, below 0.05x {float((r_2L < 0.05).float().mean()):.0%}")

    print(f"{args.sae}: {len(lat)} latents split (parent frequency {parent.min():.3f}-{parent.max():.3f}), "
          f"{args.rows} rows; half's firing rate / parent's:")
    show("shared parent encoder (library rule)", new)
    show("encoder along the pattern's mean (earlier)", old)


if __name__ == "__main__":
    main()
