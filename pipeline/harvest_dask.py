"""Parallel harvest over Dask: each worker loads the model once and writes whole shards of its own
contiguous range of groups straight into the shared store (shards are pure functions of the config,
so the result equals a single-process harvest)."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import RunConfig


def split_contiguous(items: list[int], n_parts: int) -> list[list[int]]:
    """``items`` cut into at most ``n_parts`` contiguous, nearly equal, non-empty runs."""
    n_parts = max(1, min(n_parts, len(items)))
    base, extra = divmod(len(items), n_parts)
    out, at = [], 0
    for i in range(n_parts):
        size = base + (1 if i < extra else 0)
        out.append(items[at:at + size])
        at += size
    return out


def harvest_worker(cfg_dict: dict, root: str, groups: list[int], torch_threads: int) -> int:
    """Dask task: produce and write ``groups``; returns the rows written."""
    import torch

    import pipeline  # noqa: F401  (offline Hugging Face environment before transformers loads)
    from pipeline.model_source import model_source

    torch.set_num_threads(torch_threads)
    cfg = RunConfig.from_dict(cfg_dict)
    with model_source(cfg).group_harvester(Path(root)) as worker:
        return worker.run(groups, progress=False)


def harvest_groups_dask(cfg: RunConfig, root: Path, groups: list[int], *, client=None,
                        total_rows: int, progress: bool = True) -> None:
    from dask.distributed import Client, LocalCluster, wait
    from tqdm.auto import tqdm

    from cache_tools.layout import MANIFEST_NAME
    from cache_tools.manifest import Manifest

    if not groups:
        return
    cluster = None
    if client is None:
        n = cfg.harvest.n_workers
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
        client = Client(cluster)
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        threads = max(1, (os.cpu_count() or 1) // n_workers)
        futures = [client.submit(harvest_worker, cfg.to_dict(), str(root), part, threads, pure=False)
                   for part in split_contiguous(groups, n_workers)]
        manifest = Manifest(root / MANIFEST_NAME)
        before = sum(r.rows for r in manifest.load().values())
        with tqdm(total=total_rows, unit="tok", unit_scale=True, desc=f"harvest x{n_workers}",
                  disable=not progress, dynamic_ncols=True) as bar:
            pending = futures
            while pending:
                try:
                    done, pending = wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
                except TimeoutError:  # nothing finished within the poll interval
                    done = set()
                for fut in done:
                    fut.result()  # re-raises a worker's error here
                pending = list(pending)
                bar.n = min(total_rows, sum(r.rows for r in manifest.load().values()) - before)
                bar.refresh()
    finally:
        if cluster is not None:
            client.close()
            cluster.close()
