"""Train stage: every (trainer, seed) of the config into ``run_dir/saes/<trainer>_s<seed>/``.

Idempotent: an SAE whose ``sae_meta.json`` exists is complete and skipped; an interrupted one
resumes from its newest checkpoint.
"""
from __future__ import annotations

from pathlib import Path

from fc_base.progress import mark_on_disk, run_scope, stage_progress
from fc_base.sae_folder import SAES_DIR, is_complete, sae_name
from pipeline.config import RunConfig
from pipeline.model_source import model_source
from trainers.training.config import TrainJob
from trainers.training.data import ActivationSource
from trainers.training.export import ModelInfo
from trainers.training.loop import train_sae
from trainers.training.recipe import get_recipe


def planned_saes(cfg: RunConfig, trainer: str | None = None, seed: int | None = None,
                 point: str | None = None) -> list[TrainJob]:
    """The config's SAEs (``TrainConfig.jobs``), optionally only one trainer, seed or sweep point."""
    if trainer is not None:
        get_recipe(trainer)  # one clear error for an unknown name
    if point:
        cfg.train.at_point(point)  # one clear error for an unknown point
    jobs = cfg.train.jobs()
    if trainer is not None and trainer not in {j.trainer for j in jobs}:
        jobs += [TrainJob(trainer, s, p) for s in cfg.train.seeds for p in dict.fromkeys(j.point for j in jobs)]
    if seed is not None and seed not in {j.seed for j in jobs}:
        jobs += [TrainJob(t, seed, p) for t, p in dict.fromkeys((j.trainer, j.point) for j in jobs)]
    chosen = [j for j in jobs if (trainer is None or j.trainer == trainer) and (seed is None or j.seed == seed)
              and (point is None or j.point == point)]
    if not chosen:
        from fc_base.errors import ConfigError

        raise ConfigError(f"the config trains no SAE with trainer={trainer}, seed={seed}, point={point} "
                          "(see train.sweep: a point may restrict its trainers and seeds)")
    return chosen


def model_info(cfg: RunConfig) -> ModelInfo:
    extra = model_source(cfg).sae_metadata()
    return ModelInfo(model_name=cfg.model.name, model_source=cfg.model.source, layer=cfg.model.layer,
                     hook_name=cfg.model.hook, extra_metadata=extra)


def open_activations(run_dir: Path) -> ActivationSource:
    from cache_tools import open_store

    cache_dir = run_dir / "cache"
    if not cache_dir.exists():
        raise FileNotFoundError(f"no activation cache at {cache_dir}: run the harvest stage first")
    return open_store(cache_dir)


def train(cfg: RunConfig, run_dir: str | Path, trainer: str | None = None, seed: int | None = None, *,
          point: str | None = None, source: ActivationSource | None = None, progress: bool = True) -> list[Path]:
    """Train the SAEs not yet complete on disk; return the folders of all requested SAEs.
    ``source`` replaces the run's activation cache (benchmarks and tests feed tensors)."""
    run_dir = Path(run_dir)
    plan = planned_saes(cfg, trainer, seed, point)
    out_dirs = [run_dir / SAES_DIR / sae_name(j.trainer, j.seed, j.point) for j in plan]
    todo = [(j, d) for j, d in zip(plan, out_dirs) if not is_complete(d)]
    pending = {d for _, d in todo}
    for out_dir in out_dirs:
        if out_dir not in pending:
            mark_on_disk(run_dir, f"train.{out_dir.name}", label=f"train {out_dir.name}", unit="step")
    if todo:
        source = source if source is not None else open_activations(run_dir)
        info = model_info(cfg)
        with run_scope(run_dir):  # the loop writes each SAE's progress record here
            for job, out_dir in todo:
                _train_one(source, cfg, job, out_dir, info, progress)
    return out_dirs


def _train_one(source: ActivationSource, cfg: RunConfig, job: TrainJob, out_dir: Path, info: ModelInfo,
               progress: bool) -> None:
    train_cfg = cfg.train.at_point(job.point)
    if get_recipe(job.trainer).train is None:
        train_sae(source, train_cfg, job.trainer, job.seed, out_dir, info, progress=progress)
        return
    # A recipe with a loop of its own (SAELens's trainer) reports no steps: its line shows elapsed time.
    with stage_progress(f"train.{out_dir.name}", label=f"train {out_dir.name}", unit="step"):
        train_sae(source, train_cfg, job.trainer, job.seed, out_dir, info, progress=progress)
