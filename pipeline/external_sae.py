"""Bringing an SAE trained elsewhere (SAELens's format) into a run: ``fc-sae eval --sae-path FOLDER``.

The SAE is checked against the run before anything is written: its cfg.json must name the run's
model and hook, its width the cache's, and its rewritten tensors (:mod:`eval.external_sae`) must
reconstruct real cache rows as SAELens's own SAE does. It then becomes an ordinary SAE folder,
``RUN_DIR/saes/<name>/`` with trainer ``external`` and its provenance in ``sae_meta.json``, so the
evals, the results table, the report and ``fc-sae dashboard`` take it as they take the SAEs trained
here. Importing the same folder again is a no-op (same sha256), so finished evals stay current.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from fc_base.errors import ConfigError
from fc_base.io import write_json_atomic
from fc_base.sae_folder import SAELENS_CFG_FILE, SAES_DIR, WEIGHTS_FILE, SAEMeta
from pipeline.config import RunConfig
from pipeline.rundir import trained_and_cached_sources

CHECK_ROWS = 2048
"""Cache rows on which the rewritten SAE must match SAELens's own encode and decode."""


def default_name(folder: Path) -> str:
    """``external_<folder name>``, reduced to letters, digits, ``-`` and ``_``."""
    return "external_" + (re.sub(r"[^A-Za-z0-9_-]+", "-", folder.resolve().name).strip("-") or "sae")


def _meta(external, name: str, cfg: RunConfig) -> SAEMeta:
    from eval.external_sae import EXTERNAL_TRAINER

    return SAEMeta(name=name, trainer=EXTERNAL_TRAINER, seed=0, architecture=external.architecture, k=external.k,
                   d_in=external.d_in, d_sae=external.d_sae, model_name=external.model_name,
                   model_source=cfg.model.source, layer=external.layer, hook_name=external.hook_name,
                   train_tokens=external.train_tokens, l0_target=external.k, final_l0=None, norm_scale=None,
                   external=external.provenance())


def _check_run(meta: SAEMeta, cfg: RunConfig, store) -> None:
    """The SAE must read what the run holds: the config's model and hook, the cache's width."""
    if (meta.model_name, meta.hook_name) != (cfg.model.name, cfg.model.hook):
        raise ConfigError(f"the SAE at {meta.external['source']} was trained on {meta.model_name} {meta.hook_name}, "
                          f"but this run holds {cfg.model.name} {cfg.model.hook}")
    want, have = trained_and_cached_sources(store.attrs, meta)
    if want != have or store.d_model != meta.d_in:
        raise ConfigError(f"the SAE at {meta.external['source']} reads {want[0]} layer {want[1]} {want[2]} "
                          f"(d_in {meta.d_in}), but the run's activation cache holds {have[0]} layer {have[1]} "
                          f"{have[2]} (d_model {store.d_model})")


def import_external_sae(run_dir: str | Path, folder: str | Path, cfg: RunConfig, name: str | None = None) -> str:
    """Check the SAELens folder against the run and write it as ``RUN_DIR/saes/<name>/``; returns the
    name. Bad input (incomplete folder, another model or hook, an SAE already of that name from
    another source) raises with one line and writes nothing."""
    import torch
    from safetensors.torch import save_file

    from cache_tools import open_store
    from eval.external_sae import check_against_saelens, read_external
    from eval.sae import FolderSAE

    run_dir, folder = Path(run_dir), Path(folder)
    name = name or default_name(folder)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ConfigError(f"--sae-name must be letters, digits, '-' or '_', got {name!r}")
    external = read_external(folder)
    meta = _meta(external, name, cfg)
    cache = run_dir / "cache"
    if not cache.exists():
        raise ConfigError(f"no activation cache at {cache}: run the harvest stage first")
    store = open_store(cache)
    _check_run(meta, cfg, store)
    out = run_dir / SAES_DIR / name
    if out.exists():
        try:
            old = SAEMeta.read(out)
        except ValueError:
            old = None
        if old is not None and old.external and old.external.get("sha256") == external.digest:
            return name  # already imported: the evals that ran on it stay current
        raise ConfigError(f"{out} already holds another SAE; choose another --sae-name")
    project_sae = FolderSAE(external.tensors, meta)
    x_ND = torch.from_numpy(store.read_rows(0, min(CHECK_ROWS, store.n_rows)))
    check_against_saelens(external, project_sae, x_ND)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out.parent))
    try:
        save_file(external.tensors, str(tmp / WEIGHTS_FILE))
        write_json_atomic(tmp / SAELENS_CFG_FILE, json.loads(json.dumps(external.saelens_cfg, default=str)))
        meta.write(tmp)  # the completion marker, last
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return name
