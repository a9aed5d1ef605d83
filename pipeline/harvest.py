"""Harvest stage: stream the corpus through the model (stopped after the hooked module) into the
sharded activation store ``run_dir/cache``.

Rows are produced in *groups* of ``shuffle_buffer_shards`` shards. A group's windows are forwarded
in batches that start at the group's first window, its rows are shuffled with a generator seeded by
(corpus seed, group), and it is cut into whole shards. Every shard is therefore a pure function of
(config, shard index): a resumed harvest, or one split across Dask workers, writes byte-identical
shards. A crash loses at most the group in flight; the next run removes leftovers and redoes only
the groups that still miss shards. A complete store with the same configuration is not redone.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

from cache_tools.errors import StoreError
from cache_tools.layout import LAYOUT_ATTR, MANIFEST_NAME, StoreSpec, read_group_attrs
from cache_tools.manifest import Manifest
from cache_tools.writer import IDENTITY_ATTR, StoreWriter
from fc_base.progress import StageProgress, mark_on_disk, stage_progress
from fc_base.torch_utils import slow_cpu_low_precision
from pipeline.config import RunConfig
from pipeline.harvest_dask import harvest_groups_dask
from pipeline.harvest_groups import GroupHarvester, HarvestError, HarvestPlan, make_plan  # noqa: F401  (re-exported)
from pipeline.model_source import model_source

CACHE_DIR = "cache"


def content_identity(cfg: RunConfig) -> str:
    """Fingerprint of every setting that determines the cached rows (not the device or worker count)."""
    model = {k: v for k, v in asdict(cfg.model).items() if k not in ("device", "synthetic_config")}
    harvest = {k: v for k, v in asdict(cfg.harvest).items() if k != "n_workers"}
    content = {"model": model, "corpus": asdict(cfg.corpus), "harvest": harvest,
               **model_source(cfg).identity_content()}
    blob = json.dumps(content, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _existing_store_state(root: Path, identity: str) -> bool:
    """True if ``root`` holds a complete store of this configuration; raise if it holds another."""
    if not (root / "zarr.json").is_file():
        return False
    try:
        attrs = read_group_attrs(root)
    except StoreError as e:
        raise HarvestError(str(e)) from None
    if attrs.get(IDENTITY_ATTR) != identity:
        raise HarvestError(f"{root} holds activations harvested with a different model/corpus/harvest "
                           f"config; delete it or use another run directory")
    spec = StoreSpec.from_dict(attrs[LAYOUT_ATTR])
    return len(Manifest(root / MANIFEST_NAME).load()) == spec.n_shards


# ---- the stage ------------------------------------------------------------------------------

class PreparedHarvest(NamedTuple):
    """An opened store and the work still to do in it."""

    root: Path
    writer: StoreWriter
    plan: HarvestPlan
    tokenizer: object
    groups: list[int]
    """Groups that still miss at least one shard."""
    rows_to_compute: int
    """Rows those groups produce (finished shards inside them are recomputed but not rewritten)."""


def prepare_harvest(cfg: RunConfig, run_dir: str | Path) -> PreparedHarvest:
    """Create or reopen ``run_dir/cache``, clear leftovers of an interrupted run, list what is left."""
    source = model_source(cfg)
    root = Path(run_dir) / CACHE_DIR
    site = source.hook_site()  # the source reads the model's config once for this and its width
    tokenizer, plan = source.plan()
    spec = StoreSpec(n_rows=plan.n_rows, d_model=source.d_model(), shard_rows=cfg.harvest.shard_rows,
                     chunk_rows=cfg.harvest.chunk_rows, acts_dtype=cfg.harvest.store_dtype)
    try:
        writer = StoreWriter.create_or_open(root, spec, source.store_attrs(plan, tokenizer, site),
                                            content_identity(cfg))
    except StoreError as e:
        raise HarvestError(str(e)) from None
    writer.remove_leftovers()
    groups = sorted({plan.group_of(s) for s in writer.missing_shards()})
    rows = sum(plan.group_rows(g)[1] - plan.group_rows(g)[0] for g in groups)
    return PreparedHarvest(root, writer, plan, tokenizer, groups, rows)


def harvest(cfg: RunConfig, run_dir: str | Path, *, client=None, progress: bool = True) -> Path:
    """Fill ``run_dir/cache`` with the activations ``cfg`` describes and return its path.

    ``client``: an existing ``dask.distributed.Client`` to spread the work over; otherwise
    ``harvest.n_workers > 1`` starts a LocalCluster of that many worker processes.
    """
    root = Path(run_dir) / CACHE_DIR
    check_hook(cfg)  # a hook the model does not have fails here, before anything is written
    if _existing_store_state(root, content_identity(cfg)):
        mark_on_disk(run_dir, "harvest", unit=_unit(cfg))
        return root
    slow = slow_cpu_low_precision(cfg.model.dtype, cfg.model.device)
    if slow:
        print(f"harvest: {slow} (--set model.dtype=float32; it changes the cached activations)", file=sys.stderr)
    with _exclusive_harvest_lock(Path(run_dir)):
        return _harvest_locked(cfg, run_dir, root, client=client, progress=progress)


@contextlib.contextmanager
def _exclusive_harvest_lock(run_dir: Path):
    """One coordinating harvest per store: a second one would delete the first one's temp files.
    The lock dies with its process, so a killed harvest never blocks the next one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".harvest.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HarvestError(f"another harvest is already writing {run_dir / CACHE_DIR}") from None
        yield


def _harvest_locked(cfg: RunConfig, run_dir: str | Path, root: Path, *, client, progress: bool) -> Path:
    prep = prepare_harvest(cfg, run_dir)
    fan_out = client is not None or cfg.harvest.n_workers > 1
    # The Dask fan-out draws its own bar on stderr; there the record follows the manifest.
    with stage_progress("harvest", prep.rows_to_compute, _unit(cfg), run_dir=run_dir, bar=progress and not fan_out,
                        unit_scale=True) as bar:
        if fan_out:
            with _manifest_progress(root, bar):
                harvest_groups_dask(cfg, root, prep.groups, client=client, total_rows=prep.rows_to_compute,
                                    progress=progress)
        else:
            with model_source(cfg).group_harvester(root, tokenizer=prep.tokenizer) as worker:
                for g in prep.groups:  # GroupHarvester.run's loop, with the record as its bar
                    worker.run_group(g, bar)
        if not prep.writer.is_complete():
            raise HarvestError(f"harvest finished but {root} still misses shards {prep.writer.missing_shards()[:8]}")
    return root


def _unit(cfg: RunConfig) -> str:
    return model_source(cfg).unit


@contextlib.contextmanager
def _manifest_progress(root: Path, bar: StageProgress, interval_s: float = 1.0):
    """Keep ``bar`` at the rows the manifest lists as written (polled in a thread) while the body runs."""
    manifest = Manifest(root / MANIFEST_NAME)
    before = sum(r.rows for r in manifest.load().values())
    stop = threading.Event()

    def sync() -> None:
        bar.set(sum(r.rows for r in manifest.load().values()) - before)

    def poll() -> None:
        while not stop.wait(interval_s):
            sync()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sync()


def check_hook(cfg: RunConfig):
    """The module ``cfg.model.hook`` is read from (a ``HookSite``; None for a synthetic model).

    Raises HarvestError naming the hook when the model has no such layer or its family's attention
    and MLP modules are unknown; the config already checked the name and that it is at model.layer."""
    return model_source(cfg).hook_site()
