"""A run directory and the config it was created with.

The first stage that touches a run directory saves the resolved config as ``config.json``; later
stages reuse it, so ``fc-sae eval --run-dir DIR`` needs no preset.  A different config for the parts
that define the cached activations (model, corpus, harvest) is refused: mixing them would silently
compare SAEs trained on different data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pipeline.config import ConfigError, RunConfig, apply_overrides, resolve_config

CONFIG_FILE = "config.json"
_DATA_DEFINING = ("model", "corpus", "harvest")


def load_run_config(run_dir: str | Path) -> RunConfig | None:
    path = Path(run_dir) / CONFIG_FILE
    return RunConfig.load(path) if path.is_file() else None


def prepare_run_dir(run_dir: str | Path, cfg: RunConfig | None = None,
                    check: Callable[[RunConfig], Any] | None = None) -> RunConfig:
    """Create ``run_dir`` if needed and return the config to run with (saved beside the results).
    ``check`` validates a config against its model (e.g. the hook's layer exists) before it is saved,
    so a rejected config leaves no ``config.json`` that a corrected one would then clash with."""
    run_dir = Path(run_dir)
    saved = load_run_config(run_dir)
    if cfg is None:
        if saved is None:
            raise ConfigError(f"{run_dir} has no {CONFIG_FILE}; pass --preset or --config")
        return saved
    if saved is not None:
        old, new = saved.to_dict(), cfg.to_dict()
        for section in _DATA_DEFINING:
            if old[section] != new[section]:
                changed = sorted(k for k in new[section] if old[section].get(k) != new[section][k])
                raise ConfigError(
                    f"{run_dir} was created with a different {section} config ({', '.join(changed)}); "
                    "use a new --run-dir")
    if check is not None:
        check(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / CONFIG_FILE)
    return cfg


def config_for(run_dir: str | Path, preset: str | None = None, config_file: str | None = None,
               overrides: list[str] | None = None, check: Callable[[RunConfig], Any] | None = None) -> RunConfig:
    """The CLI's rule: an explicit preset/config wins (and is checked against the run dir); bare
    overrides apply on top of the run dir's saved config."""
    if preset is None and config_file is None:
        saved = load_run_config(run_dir)
        if saved is not None:
            return prepare_run_dir(run_dir, apply_overrides(saved, overrides) if overrides else None, check)
        if not overrides:
            return prepare_run_dir(run_dir)  # raises: nothing says which config to run with
    return prepare_run_dir(run_dir, resolve_config(preset, config_file, overrides), check)


def trained_and_cached_sources(store_attrs: dict, meta) -> tuple[tuple, tuple]:
    """What an SAE folder (its SAEMeta) was trained on and what an activation cache (its group attrs)
    holds, each as ``(model name, layer, hook name)``: equal when the SAE may read the cache."""
    model = store_attrs.get("model")
    name = model.get("name") if isinstance(model, dict) else model
    return (meta.model_name, meta.layer, meta.hook_name), (name, store_attrs.get("layer"), store_attrs.get("hook_name"))
