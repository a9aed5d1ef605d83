"""Harvest throughput against the model's own truncated forward, measured side by side.

Both passes use the same loaded model (stopped after the hooked layer), the same windows and the same
batch size; the harvest pass additionally reads and tokenises the corpus, checks every batch for
NaN/inf, shuffles, and writes fsynced shards plus manifest lines. The forward-only pass runs before
and after the harvest and their mean is the baseline (the machine may be shared).

    .venv/bin/python benchmarks/harvest.py                 # demo preset (Gemma-3-270m, bf16)
    .venv/bin/python benchmarks/harvest.py --preset tiny --tokens 16384
"""
from __future__ import annotations

import argparse
import itertools
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
    ap.add_argument("--tokens", type=int, default=131072, help="rows to harvest (harvest.n_tokens)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()
    cfg = apply_overrides(get_preset(args.preset), [f"harvest.n_tokens={args.tokens}"] + args.overrides)
    with tempfile.TemporaryDirectory(prefix="fc-sae-bench-harvest-") as tmp:
        prep = prepare_harvest(cfg, Path(tmp))
        t0 = time.perf_counter()
        worker = GroupHarvester(cfg, prep.root, tokenizer=prep.tokenizer)
        load_s = time.perf_counter() - t0
        plan = prep.plan
        n_windows = sum(plan.group_windows(g)[1] - plan.group_windows(g)[0] for g in prep.groups)
        windows = list(itertools.islice(iter_windows(cfg.corpus, prep.tokenizer), plan.group_windows(prep.groups[-1])[1]))
        bs = cfg.harvest.batch_size
        batches = []
        for g in prep.groups:  # exactly the batches the harvest forwards
            w0, w1 = plan.group_windows(g)
            batches += [torch.tensor([w[0] for w in windows[b:min(b + bs, w1)]]) for b in range(w0, w1, bs)]
        tokens = n_windows * cfg.corpus.context_length
        worker.forward(batches[0])  # warm-up
        fwd1 = forward_only(worker, batches)
        t0 = time.perf_counter()
        worker.run(prep.groups, progress=False)
        harvest_s = time.perf_counter() - t0
        fwd2 = forward_only(worker, batches)
        worker.close()
        assert prep.writer.is_complete()
        fwd_rate = tokens / ((fwd1 + fwd2) / 2)
        harvest_rate = tokens / harvest_s
        print(f"model       {cfg.model.name} layer {cfg.model.layer} ({cfg.model.dtype}), "
              f"{torch.get_num_threads()} threads, batch {bs} x {cfg.corpus.context_length} tokens")
        print(f"work        {tokens} tokens forwarded ({n_windows} windows) -> {plan.n_rows} rows, "
              f"{plan.n_shards} shards ({cfg.harvest.store_dtype})")
        print(f"model load  {load_s:.1f} s (excluded from both rates)")
        print(f"forward     {fwd_rate:,.0f} tok/s  (runs: {tokens / fwd1:,.0f} before, {tokens / fwd2:,.0f} after)")
        print(f"harvest     {harvest_rate:,.0f} tok/s  (corpus + forward + checks + shuffle + fsynced shards)")
        print(f"ratio       {harvest_rate / fwd_rate:.3f}  (target >= 0.90)")


if __name__ == "__main__":
    main()
