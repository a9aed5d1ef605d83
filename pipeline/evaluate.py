"""Evaluate stage: one task per (SAE, eval), each stored as ``run_dir/eval/<sae>/<eval>.json``, then
an atomic merge into ``run_dir/results.parquet``.

A failing eval becomes a ``failed`` row with its error and the other tasks still land; an eval that
needs the network where there is none becomes a ``skipped`` row with the reason.  A task whose JSON
is newer than its SAE and was made with the same settings is not re-run (``force`` re-runs it).
"""
from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from eval.config import EVALS, EvalConfigError
from eval.results import aggregate_tasks, make_rows, read_task, task_path, write_task
from eval.sae import META_FILE, SAEMeta, list_sae_folders, load_sae
from pipeline.config import RunConfig

# Evals in one process run one at a time: they share the loaded model (and patch its forward to stop
# early), sae-bench seeds Python's global RNG, and each eval already uses every core.  Thread-pool
# task runners therefore queue here; process-based runners run in parallel, coordinated by file locks.
_COMPUTE_LOCK = threading.Lock()

_SETTINGS = {
    "absorption": ("absorption_word_sample", "word_sample_seed", "llm_dtype", "absorption_max_k",
                   "absorption_probe_epochs", "absorption_min_probe_f1", "absorption_min_letters"),
    "core": ("llm_dtype", "core_n_docs", "core_context_length", "core_batch_size_prompts",
             "core_reconstruction_batches", "core_sparsity_batches"),
    "sparse_probing_sae_probes": ("llm_dtype", "sae_probes_datasets", "sae_probes_ks", "sae_probes_max_seq_len",
                                  "sae_probes_llm_baseline"),
}


def eval_settings(cfg: RunConfig, eval_name: str) -> dict[str, Any]:
    """The settings that determine an eval's result (stored in the ``eval_config`` column)."""
    names = _SETTINGS.get(eval_name, ("llm_dtype", "llm_batch_size"))
    settings = {name: getattr(cfg.eval, name) for name in names}
    if eval_name == "core":
        settings["corpus"] = cfg.corpus.source
        settings["corpus_seed"] = cfg.corpus.seed
    return settings


def _is_current(path: Path, sae_folder: Path, settings: dict[str, Any]) -> bool:
    if not path.is_file() or path.stat().st_mtime < (sae_folder / META_FILE).stat().st_mtime:
        return False
    rows = read_task(path)["rows"]
    return bool(rows) and rows[0]["status"] == "ok" and json.loads(rows[0]["eval_config"]) == json.loads(
        json.dumps(settings, sort_keys=True, default=str))


def _compute(eval_name: str, cfg: RunConfig, run_dir: Path, sae_folder: Path, meta: SAEMeta
             ) -> tuple[dict[str, float], dict[str, Any]]:
    """Run one eval on one SAE: (metrics, details)."""
    from eval.runtime import eval_device, hooked_model, torch_dtype

    ecfg = cfg.eval
    device = eval_device(ecfg)
    model = hooked_model(meta.model_name, meta.model_source, ecfg)
    if eval_name == "absorption":
        from eval.absorption import ensure_probe, run_absorption

        sae = load_sae(sae_folder, device=device)  # float32: the probe and upcast activations are float32
        probe = ensure_probe(model, meta.layer, run_dir, ecfg)
        metrics, letters = run_absorption(model, sae, meta.name, probe, ecfg)
        return dict(metrics), {"letters": letters, "token_pos": probe.token_pos, "n_words": len(probe.words),
                               "prompt_forwards": metrics.prompt_forwards}
    if eval_name == "core":
        from eval.core import ensure_text_dataset, run_core

        sae = load_sae(sae_folder, device=device, dtype=torch_dtype(ecfg.llm_dtype))
        dataset = ensure_text_dataset(run_dir, cfg.corpus, ecfg)
        return run_core(model, sae, meta.name, dataset, ecfg), {}
    if eval_name == "sparse_probing_sae_probes":
        from eval.sae_probes import run_sae_probes

        sae = load_sae(sae_folder, device=device)
        return run_sae_probes(model, sae, meta.name, run_dir, ecfg, meta.model_name), {}
    from eval.network_evals import run_network_eval

    sae = load_sae(sae_folder, device=device, dtype=torch_dtype(ecfg.llm_dtype))
    return run_network_eval(eval_name, sae, meta.name, run_dir, ecfg, meta.model_name), {}


def run_eval_task(cfg: RunConfig, run_dir: str | Path, sae_name: str, eval_name: str, *,
                  force: bool = False) -> Path:
    """Run one (SAE, eval) task and store its rows; returns the task JSON path.

    Never raises for a failing eval (that becomes a ``failed`` row); raises only for bad input
    (unknown eval, missing SAE folder)."""
    from eval.network_evals import unavailable_reason

    run_dir = Path(run_dir)
    if eval_name not in EVALS:
        raise EvalConfigError(f"unknown eval {eval_name!r} (allowed: {', '.join(EVALS)})")
    sae_folder = run_dir / "saes" / sae_name
    meta = SAEMeta.read(sae_folder)
    settings = eval_settings(cfg, eval_name)
    path = task_path(run_dir, sae_name, eval_name)
    if not force and _is_current(path, sae_folder, settings):
        return path
    reason = unavailable_reason(eval_name, cfg.eval)
    if reason is not None:
        rows = make_rows(run_dir, meta, eval_name, {}, status="skipped", error=reason, eval_config=settings)
        return write_task(path, rows)
    try:
        with _COMPUTE_LOCK:
            start = time.monotonic()
            metrics, details = _compute(eval_name, cfg, run_dir, sae_folder, meta)
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
        raise FileNotFoundError(f"no trained SAEs in {run_dir / 'saes'}: run `fc-sae train` first")
    if not saes:
        return available
    unknown = [s for s in saes if s not in available]
    if unknown:
        raise FileNotFoundError(f"no finished SAE {unknown[0]!r} in {run_dir / 'saes'} (available: {', '.join(available)})")
    return list(saes)


def select_evals(cfg: RunConfig, evals: list[str] | None) -> list[str]:
    chosen = list(evals) if evals else list(cfg.eval.evals)
    unknown = [e for e in chosen if e not in EVALS]
    if unknown:
        raise EvalConfigError(f"unknown eval {unknown[0]!r} (allowed: {', '.join(EVALS)})")
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
    for sae, ev in tqdm(tasks, desc="eval tasks", unit="task"):
        run_eval_task(cfg, run_dir, sae, ev, force=force)
    return aggregate(cfg, run_dir)
