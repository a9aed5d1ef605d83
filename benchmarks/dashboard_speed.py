"""The dashboard's cache pass against one plain encoding epoch of the same cache, in one run.

Both encode every row once with the same SAE and batch size; the plain epoch reads through the
training loader (``store.iter_batches``) and drops the codes, the dashboard pass reads in cache
order and keeps a running top-N and a histogram per selected latent. Printed: seconds of each and
their ratio, per SAE width. Widths other than the run's own SAE use random-weight TopK SAEs
(the encode costs the same whatever the weights learned).

    .venv/bin/python benchmarks/dashboard_speed.py --run-dir runs/speed --sae topk_k32_s0 --widths 4096,16384
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from cache_tools import open_store
from eval.random_sae import write_random_sae
from eval.sae import load_sae
from fc_base.sae_folder import SAEMeta
from pipeline.dashboard.scan import scan_top_activations


def plain_epoch(store, sae, batch_size: int) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        for x_BD in store.iter_batches(batch_size, seed=0):
            sae.encode(x_BD)
    return time.perf_counter() - start


def dashboard_pass(store, sae, latents: list[int], n_top: int, batch_size: int) -> float:
    start = time.perf_counter()
    scan_top_activations(store, sae, latents, n_top, batch_size)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--sae", help="the run's SAE whose meta (model, layer, k) the random SAEs copy")
    ap.add_argument("--widths", default="16384", help="comma-separated d_sae values (the run's SAE's own width: its weights)")
    ap.add_argument("--latents", type=int, default=16, help="latents the dashboard keeps (default: %(default)s)")
    ap.add_argument("--n-top", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4096)
    args = ap.parse_args()

    store = open_store(args.run_dir / "cache")
    folder = args.run_dir / "saes" / args.sae
    meta = SAEMeta.read(folder)
    store.read_rows(0, store.n_rows)  # warm the page cache so neither side pays the disk
    print(f"cache {store.n_rows:,} rows x {store.d_model} ({store.acts_dtype}), batch {args.batch_size}, "
          f"{args.latents} latents, top {args.n_top}, torch threads {torch.get_num_threads()}")
    print(f"{'d_sae':>7} {'plain epoch s':>14} {'dashboard s':>12} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for width in (int(w) for w in args.widths.split(",")):
            if width == meta.d_sae:
                sae = load_sae(folder)
            else:
                sae = load_sae(write_random_sae(Path(tmp) / f"w{width}", trainer="random", seed=0, d_in=meta.d_in,
                                                d_sae=width, model_name=meta.model_name, layer=meta.layer,
                                                architecture=meta.architecture, k=meta.k))
            latents = torch.randperm(width, generator=torch.Generator().manual_seed(0))[:args.latents].tolist()
            plain = plain_epoch(store, sae, args.batch_size)
            dash = dashboard_pass(store, sae, latents, args.n_top, args.batch_size)
            print(f"{width:>7} {plain:>14.2f} {dash:>12.2f} {dash / plain:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
