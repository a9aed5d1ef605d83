"""Evaluate stage: one task per (SAE, eval), each stored as ``run_dir/eval/<sae>/<eval>.json``, then
an atomic merge into ``run_dir/results.parquet``.

A failing eval becomes a ``failed`` row with its error and the other tasks still land; an eval that
needs the network where there is none becomes a ``skipped`` row with the reason.  A task whose JSON
is newer than its SAE and was made with the same settings and package versions is not re-run
(``force`` re-runs it).
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval.config import LEGACY_FIELDS
from eval.results import aggregate_tasks, make_rows, package_versions, read_task, task_path, write_task
from eval.spec import EvalInputs, EvalSpec, get_eval
from fc_base.errors import ConfigError
from fc_base.progress import run_scope, stage_progress
from fc_base.sae_folder import META_FILE, SAES_DIR, SAEMeta, list_sae_folders
from fc_base.torch_utils import resolve_device, torch_dtype
from pipeline.config import RunConfig
from pipeline.model_source import model_source

if TYPE_CHECKING:
    import torch

# Evals in one process run one at a time: they share the loaded model (and patch its forward to stop
# early), sae-bench seeds Python's global RNG, and each eval already uses every core.  Thread-pool
# task runners therefore queue here; process-based runners run in parallel, coordinated by file locks.
_COMPUTE_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str, str, str], object] = {}
_MODELS_LOCK = threading.Lock()
ARTIFACTS_DIR = "eval_artifacts"


def eval_settings(cfg: RunConfig, eval_name: str) -> dict[str, Any]:
    """The settings that determine an eval's result (stored in the ``eval_config`` column), with the
    versions of the packages that compute it (``packages``: sae-bench, sae-lens, torch, transformers)."""
    spec = get_eval(eval_name)
    settings = {name: getattr(cfg.eval, name) for name in spec.common_settings}
    settings["packages"] = package_versions()
    if spec.options is not None:
        settings.update(dataclasses.asdict(cfg.eval.option(spec.options)))
    if spec.text_docs is not None:
        settings["corpus"] = cfg.corpus.source
        settings["corpus_seed"] = cfg.corpus.seed
    source = model_source(cfg)
    if spec.model_kind == source.kind:  # e.g. the synthetic model's config hash
        settings.update(source.eval_settings())
    return settings


def _is_current(path: Path, sae_folder: Path, settings: dict[str, Any]) -> bool:
    if not path.is_file() or path.stat().st_mtime < (sae_folder / META_FILE).stat().st_mtime:
        return False
    rows = read_task(path)["rows"]
    if not rows or any(r["metric"] == "" for r in rows):  # a failed or skipped task is tried again
        return False
    # Task files of earlier versions name the options by their old flat config fields.
    stored = {LEGACY_FIELDS.get(k, (None, k))[1]: v for k, v in json.loads(rows[0]["eval_config"]).items()}
    return stored == json.loads(json.dumps(settings, sort_keys=True, default=str))


def _cached(key: tuple, load):
    """One model (or held-out sample) per key, loaded once per process and shared by every SAE."""
    with _MODELS_LOCK:
        if key not in _MODELS:
            if key[0] == "model":
                _MODELS.clear()  # one model (and its held-out rows) in memory at a time
            _MODELS[key] = load()
        return _MODELS[key]


def hooked_model(name: str, source: str, cfg: RunConfig):
    """The TransformerLens model by official name."""
    from pipeline.models import load_hooked_model

    device = resolve_device(cfg.eval.device)
    return _cached(("model", name, source, cfg.eval.llm_dtype, device),
                   lambda: load_hooked_model(name, source=source, dtype=cfg.eval.llm_dtype, device=device))


def check_synthetic_source(cfg: RunConfig, run_dir: Path, meta: SAEMeta) -> str:
    """The config hash of the run's synthetic model; raises when the SAE or the activation cache
    came from another synthetic model or config than the one the eval would score against."""
    from pipeline.synthetic_models import config_hash, synthetic_config

    if meta.model_name != cfg.model.name:
        raise ConfigError(f"SAE {meta.name} was trained on {meta.model_name}, the run config names {cfg.model.name}")
    wanted = config_hash(synthetic_config(cfg.model.name, cfg.model.synthetic_config or None))
    cache = Path(run_dir) / "cache"
    if (cache / "zarr.json").is_file():
        from cache_tools.layout import read_group_attrs

        harvested = read_group_attrs(cache).get("model", {}).get("synthetic_config_hash")
        if harvested != wanted:
            raise ConfigError(f"{cache} was harvested from synthetic config {harvested}, but the eval asks for "
                              f"{cfg.model.name} with config {wanted}; use the config the run was made with")
    return wanted


def synthetic_model(cfg: RunConfig, config_hash: str):
    from pipeline.synthetic_models import load_synthetic_model

    return _cached(("model", cfg.model.name, config_hash),
                   lambda: load_synthetic_model(cfg.model.name, cfg.model.synthetic_config or None))


def heldout_rows(model, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out synthetic rows and their true feature activations (sparse), drawn once per process."""
    import torch

    from pipeline.synthetic_models import sample_batches

    def draw():
        parts = list(sample_batches(model, rows, 16384, seed))
        return torch.cat([a for a, _ in parts]), torch.cat([f.to_sparse() for _, f in parts])

    return _cached(("heldout", id(model), rows, seed), draw)


def ensure_text_dataset(run_dir: Path, cfg: RunConfig, n_docs: int) -> Path:
    """The local text dataset (parquet, ``text`` column) of the run's corpus, written once per run."""
    from eval.runtime import file_lock
    from pipeline.corpus import write_text_dataset

    folder = Path(run_dir) / ARTIFACTS_DIR / "core_text" / f"docs{n_docs}"
    with file_lock(folder.parent / ".lock"):
        if not (folder / "train.parquet").is_file():
            write_text_dataset(cfg.corpus, folder, n_docs)
    return folder


def _wrong_model_kind(spec: EvalSpec, meta: SAEMeta) -> str | None:
    synthetic = meta.model_name.startswith("synth/")
    if spec.model_kind == "synthetic" and not synthetic:
        return f"needs an SAE trained on a synthetic model (synth/...); {meta.name} was trained on {meta.model_name}"
    if spec.model_kind == "language" and synthetic:
        return f"needs a language model; {meta.name} was trained on the synthetic model {meta.model_name}"
    return None


def _compute(spec: EvalSpec, cfg: RunConfig, run_dir: Path, sae_folder: Path, meta: SAEMeta,
             synthetic_hash: str | None) -> tuple[dict[str, float], dict[str, Any]]:
    """Run one eval on one SAE: (metrics, details). The model, the SAE and any dataset are loaded here
    and passed in, so eval modules need nothing from the pipeline. ``synthetic_hash``: the checked
    config hash of the run's synthetic model (synthetic evals)."""
    from eval.sae import load_sae

    options = cfg.eval.option(spec.options) if spec.options is not None else None
    dtype = torch_dtype(cfg.eval.llm_dtype if spec.sae_dtype == "llm" else spec.sae_dtype)
    text = ensure_text_dataset(run_dir, cfg, spec.text_docs(options)) if spec.text_docs is not None else None
    if spec.model_kind == "synthetic":
        model = synthetic_model(cfg, synthetic_hash)
        heldout = heldout_rows(model, *spec.heldout(options)) if spec.heldout is not None else None
    else:
        model, heldout = hooked_model(meta.model_name, meta.model_source, cfg), None
    inputs = EvalInputs(model=model, sae=load_sae(sae_folder, device=resolve_device(cfg.eval.device), dtype=dtype),
                        meta=meta, artifacts_dir=run_dir / ARTIFACTS_DIR, common=cfg.eval, sae_folder=sae_folder,
                        text_dataset=text, heldout=heldout)
    metrics, details = spec.run(inputs, options)
    return dict(metrics), dict(details)


def run_eval_task(cfg: RunConfig, run_dir: str | Path, sae_name: str, eval_name: str, *,
                  force: bool = False) -> Path:
    """Run one (SAE, eval) task and store its rows; returns the task JSON path.

    Never raises for a failing eval (that becomes a ``failed`` row); raises only for bad input
    (unknown eval, missing SAE folder)."""
    run_dir = Path(run_dir)
    spec = get_eval(eval_name)
    sae_folder = run_dir / SAES_DIR / sae_name
    meta = SAEMeta.read(sae_folder)
    settings = eval_settings(cfg, eval_name)
    path = task_path(run_dir, sae_name, eval_name)
    if not force and _is_current(path, sae_folder, settings):
        return path
    reason = _wrong_model_kind(spec, meta) or (spec.unavailable(cfg.eval) if spec.unavailable is not None else None)
    synthetic_hash = None
    if reason is None and spec.model_kind == "synthetic":
        synthetic_hash = check_synthetic_source(cfg, run_dir, meta)  # bad input: one clear error, not a failed row
    if reason is not None:
        rows = make_rows(run_dir, meta, eval_name, {}, status="skipped", error=reason, eval_config=settings)
        return write_task(path, rows)
    try:
        # The scope lets a long step inside the eval (the absorption probe) write its own progress record.
        with _COMPUTE_LOCK, run_scope(run_dir):
            start = time.monotonic()
            metrics, details = _compute(spec, cfg, run_dir, sae_folder, meta, synthetic_hash)
    except Exception as e:  # one eval's failure must not stop the others
        error = f"{type(e).__name__}: {e}"
        rows = make_rows(run_dir, meta, eval_name, {}, status="failed", error=error, eval_config=settings)
        return write_task(path, rows, {"traceback": traceback.format_exc()})
    details["seconds"] = time.monotonic() - start
    metrics = {**metrics, "eval_seconds": details["seconds"]}
    rows = make_rows(run_dir, meta, eval_name, metrics, eval_config=settings)
    return write_task(path, rows, details)


def select_saes(run_dir: Path, saes: list[str] | None) -> list[str]:
    available = [p.name for p in list_sae_folders(run_dir)]
    if not available:
        raise FileNotFoundError(f"no trained SAEs in {run_dir / SAES_DIR}: run `fc-sae train` first")
    if not saes:
        return available
    unknown = [s for s in saes if s not in available]
    if unknown:
        raise FileNotFoundError(f"no finished SAE {unknown[0]!r} in {run_dir / SAES_DIR} (available: {', '.join(available)})")
    return list(saes)


def select_evals(cfg: RunConfig, evals: list[str] | None) -> list[str]:
    chosen = list(evals) if evals else list(cfg.eval.evals)
    for name in chosen:
        get_eval(name)  # one clear error for an unknown name
    return chosen


def aggregate(cfg: RunConfig, run_dir: str | Path) -> Path:
    """Merge every task JSON of the run into ``results.parquet`` (atomic; re-runs replace their rows)."""
    return aggregate_tasks(Path(run_dir))


def evaluate(cfg: RunConfig, run_dir: str | Path, evals: list[str] | None = None,
             saes: list[str] | None = None, *, force: bool = False) -> Path:
    """All (SAE, eval) tasks, then the aggregate; returns the path of ``results.parquet``."""
    run_dir = Path(run_dir)
    names = select_saes(run_dir, saes)
    chosen = select_evals(cfg, evals)
    # Eval-major order: the shared artifacts of an eval (probe, activations) are built by the first SAE
    # and stay warm for the others.
    tasks = [(sae, ev) for ev in chosen for sae in names]
    with eval_progress(run_dir, tasks, bar=True) as bar:
        for i, (sae, ev) in enumerate(tasks):
            run_eval_task(cfg, run_dir, sae, ev, force=force)
            bar.update(1, note=task_note(tasks, i + 1))
    return aggregate(cfg, run_dir)


def eval_progress(run_dir: Path, tasks: list[tuple[str, str]], *, bar: bool = False):
    """The eval stage's progress record (``fc_base.progress``) over the (SAE, eval) ``tasks``, run in
    their order: it counts the finished ones and names the one running."""
    progress = stage_progress("eval", len(tasks), "task", run_dir=run_dir, label="eval", bar=bar)
    progress.note(task_note(tasks, 0))
    return progress


def task_note(tasks: list[tuple[str, str]], i: int) -> str:
    """Task ``i`` as the eval line names it while it runs ('' past the last)."""
    return f"{tasks[i][1]} · {tasks[i][0]}" if i < len(tasks) else ""
