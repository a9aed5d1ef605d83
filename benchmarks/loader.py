"""Reader and loader throughput, each next to its in-memory counterpart, measured in one run.

(a) GB/s reading every committed shard into a RAM buffer (page cache dropped for the store's files
    first, then warm), next to a plain in-memory copy of the same number of bytes, and zarr-python's
    own reader for reference.
(b) SAE training steps/s fed by ``store.iter_batches`` divided by steps/s fed from the same rows
    already in RAM (the trainers' in-memory source), same SAE, batch size and number of steps.

    .venv/bin/python benchmarks/loader.py                   # synthetic store shaped like the demo cache
    .venv/bin/python benchmarks/loader.py --store runs/demo/cache
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from cache_tools import StoreSpec, StoreWriter, acts_to_storage, open_store
from cache_tools.layout import ACTS, ARRAYS, shard_path
from cache_tools.loader import _as_storage_numpy
from cache_tools.reader import storage_to_torch


def make_synthetic_store(root: Path, n_rows: int, d_model: int, shard_rows: int) -> None:
    spec = StoreSpec(n_rows=n_rows, d_model=d_model, shard_rows=shard_rows, chunk_rows=16384, acts_dtype="bfloat16")
    writer = StoreWriter.create_or_open(root, spec, {"model": {"name": "synthetic"}}, "loader-benchmark")
    gen = torch.Generator().manual_seed(0)
    for shard in range(spec.n_shards):
        a, b = spec.shard_row_range(shard)
        acts = torch.randn((b - a, d_model), generator=gen) * 2
        ids = np.zeros(b - a, np.int32)
        writer.write_shard(shard, acts_to_storage(acts, "bfloat16"), ids, ids, ids)


def drop_page_cache(store) -> None:
    """Evict only this store's files from the page cache, so reads come from disk."""
    for shard in store.shards:
        for array in ARRAYS:
            fd = os.open(shard_path(store.path, array, shard), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def read_all(store, buf: torch.Tensor, n_threads: int = 2, via_memmap: bool = False) -> float:
    """Seconds to copy every shard into one RAM buffer the way the loader fills its mixing buffer
    (positioned reads straight into the buffer), or, for reference, through the memory maps."""
    store._maps.clear()  # fresh memory maps
    jobs, at = [], 0
    for shard in store.shards:
        rows = store.shard_rows(shard)
        for lo in range(0, rows, 16384):
            jobs.append((at + lo, shard, lo, min(lo + 16384, rows)))
        at += rows

    def copy(job):
        dst, shard, lo, hi = job
        if via_memmap:
            buf[dst:dst + hi - lo].copy_(storage_to_torch(store.shard_array(shard)[lo:hi], store.acts_dtype))
        else:
            store.read_into(shard, lo, hi, _as_storage_numpy(buf[dst:dst + hi - lo]))

    start = time.perf_counter()
    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(copy, jobs))
    return time.perf_counter() - start


def bench_reader(store) -> None:
    nbytes = store.nbytes
    gb = nbytes / 1e9
    # the loader reuses its mixing buffers, so the destination is faulted in once, as for np.copyto
    buf = torch.zeros((store.n_rows, store.d_model), dtype=store.spec.torch_dtype)
    drop_page_cache(store)
    cold = read_all(store, buf)
    warm = min(read_all(store, buf) for _ in range(2))
    drop_page_cache(store)
    cold_mm = read_all(store, buf, via_memmap=True)
    warm_mm = min(read_all(store, buf, via_memmap=True) for _ in range(2))
    src = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in first
    mem = min(_timed(lambda: np.copyto(dst, src)) for _ in range(3))
    import zarr

    z = zarr.open_array(str(store.path / ACTS), mode="r")
    zarr_s = _timed(lambda: z[:store.n_rows] if store.complete else None)
    print(f"(a) reader    {gb:.2f} GB of {store.acts_dtype} rows, {len(store.shards)} shards")
    print(f"    store, page cache dropped   {gb / cold:6.2f} GB/s")
    print(f"    store, warm page cache      {gb / warm:6.2f} GB/s")
    print(f"    via np.memmap, dropped/warm {gb / cold_mm:6.2f} / {gb / warm_mm:.2f} GB/s  (page faults per 4 KiB)")
    print(f"    in-memory copy (np.copyto)  {gb / mem:6.2f} GB/s   -> store warm / memory = {mem / warm:.2f}")
    print(f"    zarr-python z[:] (warm)     {gb / zarr_s:6.2f} GB/s   (reference)")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_sae(d_model: int, d_sae: int, k: int, device: str = "cpu"):
    from trainers.saes.topk import TopKSAE

    torch.manual_seed(0)
    sae = TopKSAE(d_model, d_sae, k).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    dead_M = torch.zeros(d_sae, dtype=torch.bool, device=device)

    def step(x_BD: torch.Tensor) -> None:
        out = sae.training_step(x_BD, dead_M)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if x_BD.is_cuda:  # time the step, not its launch
            torch.cuda.synchronize()

    return step


def paired_rates(store_batches, ram_batches, step_store, step_ram, n_steps: int) -> tuple[float, float]:
    """Steps/s of two identical SAEs trained in lock-step, one fed from each source.

    Steps alternate (store, RAM, store, ...) and each is timed together with fetching its batch, so
    both sources see the same machine load; the shared machine makes separate runs incomparable."""
    its = [iter(store_batches), iter(ram_batches)]
    steps = [step_store, step_ram]
    for it, step in zip(its, steps):  # warm-up, and the first buffer fill, outside the timing
        step(next(it))
    spent = [0.0, 0.0]
    for _ in range(n_steps):
        for i in (0, 1):
            start = time.perf_counter()
            steps[i](next(its[i]))
            spent[i] += time.perf_counter() - start
    return n_steps / spent[0], n_steps / spent[1]


def bench_training(store, d_sae: int, k: int, batch_size: int, n_steps: int, device: str = "cpu") -> None:
    from trainers.training.data import InMemoryActivations

    # On a GPU the in-memory side holds every row on the device already: the loader's best case.
    in_ram = InMemoryActivations(torch.from_numpy(store.read_rows(0, store.n_rows)).to(device))
    n_steps = min(n_steps, store.num_batches(batch_size) - 1)
    drop_page_cache(store)
    store._maps.clear()
    s, r = paired_rates(store.iter_batches(batch_size, seed=0, device=device), in_ram.iter_batches(batch_size, seed=0, device=device),
                        make_sae(store.d_model, d_sae, k, device), make_sae(store.d_model, d_sae, k, device), n_steps)
    print(f"(b) training  TopK SAE d_in {store.d_model}, d_sae {d_sae}, k {k}, batch {batch_size}, on {device}, "
          f"{n_steps} paired steps, {torch.get_num_threads()} torch threads, store page cache dropped first")
    print(f"    fed from the store          {s:6.2f} steps/s")
    print(f"    fed from in-memory tensors  {r:6.2f} steps/s")
    print(f"    ratio store / RAM           {s / r:6.3f}  (target >= 0.95)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, help="an existing store (default: a synthetic one, demo-shaped)")
    ap.add_argument("--rows", type=int, default=524288, help="rows of the synthetic store")
    ap.add_argument("--d-model", type=int, default=640)
    ap.add_argument("--d-sae", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default="cpu", help="training device of part (b), e.g. cuda")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fc-sae-bench-loader-") as tmp:
        path = args.store
        if path is None:
            path = Path(tmp) / "store"
            make_synthetic_store(path, args.rows, args.d_model, shard_rows=65536)
        store = open_store(path)
        bench_reader(store)
        bench_training(store, args.d_sae, args.k, args.batch_size, args.steps, args.device)


if __name__ == "__main__":
    main()
