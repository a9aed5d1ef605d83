"""Tracker overhead per statistic, as ratios to a TopK step measured side by side in one run, and
the tracker's memory.

One TopK step = forward, AuxK, backward, decoder-gradient projection, Adam, decoder renorm.
Variants: + the f/c tracker update (sparse path; FC-TopK, with its split events amortised over
``resample_every`` steps); + the hole statistics on ``hole_rows`` rows; and encoder suppression
(weights only) amortised over ``suppression_every`` steps; + the exclusion statistic (co-firing of
``neighbours`` decoder neighbours, refresh amortised). Steps of every variant alternate in
blocks so that machine load affects them alike; CPU time is reported next to wall time because the
CPU may be shared. Target: each ratio <= 1.10.

    .venv/bin/python benchmarks/tracker_overhead.py                        # demo shape
    .venv/bin/python benchmarks/tracker_overhead.py --d 2304 --m 16384 --k 80 --batch 4096 --steps 2
    .venv/bin/python benchmarks/tracker_overhead.py --d 2304 --m 65536 --k 320 --batch 4096 --device cuda
"""
from __future__ import annotations

import argparse
import time

import torch


from trainers.fc.splitting import fc_split  # noqa: E402
from trainers.fc.tracker import FrequencyConsistencyTracker, encoder_suppression  # noqa: E402
from trainers.training.config import TrainConfig  # noqa: E402
from trainers.training.registry import build_sae  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=640)
    ap.add_argument("--m", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--blocks", type=int, default=4, help="alternating measurement blocks per variant")
    ap.add_argument("--steps", type=int, default=5, help="steps per block")
    ap.add_argument("--resample-every", type=int, default=250)
    ap.add_argument("--hole-rows", type=int, default=256)
    ap.add_argument("--suppression-every", type=int, default=500)
    ap.add_argument("--neighbours", type=int, default=8, help="decoder neighbours of the exclusion statistic")
    ap.add_argument("--neighbour-every", type=int, default=250, help="steps between neighbour refreshes")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    cfg = TrainConfig(d_sae=args.m, k=args.k, batch_size=args.batch, n_tokens=args.batch, reservoir_rows=args.batch)
    model = build_sae("topk", cfg, args.d, torch.Generator().manual_seed(0)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    tracker = FrequencyConsistencyTracker(args.m, args.d, device=device, hole_rows=args.hole_rows)
    excl_tracker = FrequencyConsistencyTracker(args.m, args.d, device=device, hole_rows=args.hole_rows,
                                               neighbours=args.neighbours)
    excl_tracker.refresh_neighbours(model.W_dec.data)
    x_BD = torch.randn(args.batch, args.d, device=device)
    dead_M = torch.zeros(args.m, dtype=torch.bool, device=device)
    dead_M[: args.m // 50] = True  # a few dead latents so AuxK does its work, as in training
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    variants = ("topk", "fc", "fc+holes", "fc+holes+exclusion")

    def step(variant: str) -> None:
        with autocast:
            out = model.training_step(x_BD, dead_M)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        model.remove_parallel_decoder_grad()
        optimizer.step()
        model.normalise_decoder()
        if variant != "topk":
            which = excl_tracker if variant == "fc+holes+exclusion" else tracker
            which.update_sparse(x_BD, out.sparse.rows_N, out.sparse.latents_N, out.sparse.values_N,
                                model.b_dec.data, W_dec_MD=model.W_dec.data if variant != "fc" else None)

    for variant in variants * 2:  # warm-up
        step(variant)
    wall = dict.fromkeys(variants, 0.0)
    cpu = dict.fromkeys(variants, 0.0)
    for _ in range(args.blocks):
        for variant in variants:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step(variant)
            sync(device)
            wall[variant] += time.perf_counter() - t0
            cpu[variant] += time.process_time() - c0
    n = args.blocks * args.steps

    # one split event on a reservoir of one batch, amortised over resample_every steps; as many dead
    # latents as the event may split, so it does the whole surgery, as in training
    tracker.reset(torch.arange(args.m - max(1, int(0.01 * args.m)), args.m))
    sync(device)
    t0 = time.perf_counter()
    result = fc_split(model, optimizer, tracker, x_BD, model.b_dec.data, step=0, z=1.0, max_split_frac=0.01,
                      dead_freq=1e-5, min_rows=8)
    sync(device)
    split_s = time.perf_counter() - t0
    sync(device)
    t0 = time.perf_counter()
    encoder_suppression(model.W_enc.data, model.W_dec.data)
    sync(device)
    suppression_s = time.perf_counter() - t0
    sync(device)
    t0 = time.perf_counter()
    excl_tracker.refresh_neighbours(model.W_dec.data)
    sync(device)
    refresh_s = time.perf_counter() - t0

    base, fc, holes, excl = (wall[v] / n for v in variants)
    fc_amortised = fc + split_s / args.resample_every
    sae_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    adam_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                     if torch.is_tensor(t))
    print(f"device {device}, d={args.d} m={args.m} k={args.k} batch={args.batch}, {n} steps per variant")
    print(f"TopK step      {base * 1e3:8.1f} ms wall  {cpu['topk'] / n * 1e3:8.1f} ms cpu")
    print(f"FC-TopK step   {fc * 1e3:8.1f} ms wall  {cpu['fc'] / n * 1e3:8.1f} ms cpu  (f/c tracker update included)")
    print(f"+ hole stats   {holes * 1e3:8.1f} ms wall  {cpu['fc+holes'] / n * 1e3:8.1f} ms cpu  ({args.hole_rows} rows)")
    print(f"+ exclusion    {excl * 1e3:8.1f} ms wall  {cpu['fc+holes+exclusion'] / n * 1e3:8.1f} ms cpu  "
          f"({args.neighbours} neighbours; refresh {refresh_s * 1e3:.1f} ms every {args.neighbour_every} steps)")
    print(f"split event    {split_s * 1e3:8.1f} ms ({len(result.rows)} splits), amortised over "
          f"{args.resample_every} steps: {split_s / args.resample_every * 1e3:.2f} ms/step")
    print(f"suppression    {suppression_s * 1e3:8.1f} ms, amortised over {args.suppression_every} steps: "
          f"{suppression_s / args.suppression_every * 1e3:.2f} ms/step")
    print(f"ratio f/c tracker update / TopK: {fc / base:.3f} wall, {cpu['fc'] / cpu['topk']:.3f} cpu   target <= 1.10")
    print(f"ratio FC-TopK / TopK:           {fc_amortised / base:.3f} wall (update + amortised split events)")
    print(f"ratio hole statistics / FC-TopK: {holes / fc:.3f} wall, {cpu['fc+holes'] / cpu['fc']:.3f} cpu   "
          f"target <= 1.10")
    excl_amortised = excl + refresh_s / args.neighbour_every
    print(f"ratio exclusion / hole stats:   {excl_amortised / holes:.3f} wall (amortised refresh), "
          f"{cpu['fc+holes+exclusion'] / cpu['fc+holes']:.3f} cpu   target <= 1.10")
    print(f"ratio encoder suppression:      {(base + suppression_s / args.suppression_every) / base:.3f} "
          f"(amortised, vs a TopK step)   target <= 1.10")
    print(f"exclusion tracker memory {excl_tracker.extra_bytes / 2**20:.1f} MiB")
    print(f"tracker memory {tracker.extra_bytes / 2**20:.1f} MiB = {tracker.extra_bytes / sae_bytes:.2f} x SAE params "
          f"({sae_bytes / 2**20:.1f} MiB), {tracker.extra_bytes / (sae_bytes + adam_bytes):.2f} x params + Adam")


if __name__ == "__main__":
    main()
