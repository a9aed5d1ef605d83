"""Harvest throughput against the model's own truncated forward, measured side by side.

Both passes use the same loaded model (stopped after the hooked layer), the same windows and the same
batch size; the harvest pass additionally reads and tokenises the corpus, checks every batch for
NaN/inf, shuffles, and writes fsynced shards plus manifest lines. The machine may be shared, so the
comparison is paired: for each shuffle group in turn, the forward-only pass over that group's batches
runs right before and right after the harvest of the group, and the ratio is taken per group.

    .venv/bin/python benchmarks/harvest.py                 # demo preset (Gemma-3-270m, bf16)
    .venv/bin/python benchmarks/harvest.py --preset tiny --tokens 16384
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

import pipeline  # noqa: F401  (offline Hugging Face environment first)
from pipeline.config import apply_overrides, get_preset
from pipeline.corpus import iter_windows
from pipeline.harvest import GroupHarvester, prepare_harvest


def forward_only(worker: GroupHarvester, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for token_ids_BT in batches:
        worker.forward(token_ids_BT)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--tokens", type=int, default=98304, help="rows to harvest (harvest.n_tokens)")
    ap.add_argument("--shard-rows", type=int, default=16384,
                    help="shard size; with --group-shards it sets the rows per paired round")
    ap.add_argument("--group-shards", type=int, default=2, help="harvest.shuffle_buffer_shards")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()
    cfg = apply_overrides(get_preset(args.preset), [
        f"harvest.n_tokens={args.tokens}", f"harvest.shard_rows={args.shard_rows}",
        f"harvest.chunk_rows={min(16384, args.shard_rows)}",
        f"harvest.shuffle_buffer_shards={args.group_shards}"] + args.overrides)
    with tempfile.TemporaryDirectory(prefix="fc-sae-bench-harvest-") as tmp:
        prep = prepare_harvest(cfg, Path(tmp))
        t0 = time.perf_counter()
        worker = GroupHarvester(cfg, prep.root, tokenizer=prep.tokenizer)
        load_s = time.perf_counter() - t0
        plan = prep.plan
        windows = list(itertools.islice(iter_windows(cfg.corpus, prep.tokenizer),
                                        plan.group_windows(prep.groups[-1])[1]))
        bs = cfg.harvest.batch_size
        worker.forward(torch.tensor([w[0] for w in windows[:bs]]))  # warm-up
        fwd_s, harvest_s, ratios, tokens = 0.0, 0.0, [], 0
        for g in prep.groups:
            w0, w1 = plan.group_windows(g)  # exactly the batches the harvest forwards for group g
            batches = [torch.tensor([w[0] for w in windows[b:min(b + bs, w1)]]) for b in range(w0, w1, bs)]
            before = forward_only(worker, batches)
            t0 = time.perf_counter()
            worker.run([g], progress=False)
            h = time.perf_counter() - t0
            after = forward_only(worker, batches)
            fwd_s += (before + after) / 2
            harvest_s += h
            ratios.append((before + after) / 2 / h)
            tokens += (w1 - w0) * cfg.corpus.context_length
            print(f"  group {g}: forward {before:.1f} s / {after:.1f} s, harvest {h:.1f} s, ratio {ratios[-1]:.3f}",
                  flush=True)
        worker.close()
        assert prep.writer.is_complete()
        print(f"model       {cfg.model.name} layer {cfg.model.layer} ({cfg.model.dtype}), "
              f"{torch.get_num_threads()} threads, batch {bs} x {cfg.corpus.context_length} tokens")
        print(f"work        {tokens} tokens forwarded -> {plan.n_rows} rows in {plan.n_shards} shards of "
              f"{plan.shard_rows} ({cfg.harvest.store_dtype}), {len(prep.groups)} groups")
        print(f"model load  {load_s:.1f} s (excluded from both rates)")
        print(f"forward     {tokens / fwd_s:,.0f} tok/s  (truncated forward alone)")
        print(f"harvest     {tokens / harvest_s:,.0f} tok/s  (corpus + forward + checks + shuffle + fsynced shards)")
        print(f"ratio       {fwd_s / harvest_s:.3f} overall, median per group {statistics.median(ratios):.3f}"
              f"  (target >= 0.90)")


if __name__ == "__main__":
    main()
