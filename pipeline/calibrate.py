"""Calibrate stage: set the inference threshold of finished BatchTopK-family SAE folders from the
run's activation cache, in place, without retraining (trainers.training.calibration).

Everything is checked before anything is written: the SAE's trainer, and that the cache holds the
SAE's model, layer and hook. Evaluation rows of a re-calibrated SAE describe its old threshold, so
the stage names them; ``fc-sae eval --sae NAME`` replaces them.
"""
from __future__ import annotations

from pathlib import Path

from fc_base.errors import ConfigError
from fc_base.sae_folder import SAEMeta, list_sae_folders
from pipeline.rundir import trained_and_cached_sources
from trainers.training.calibration import (ThresholdCalibration, calibrate_folder, is_calibrated_family,
                                  require_calibrated_family)


def _store_identity_error(store_attrs: dict, meta: SAEMeta) -> str | None:
    want, have = trained_and_cached_sources(store_attrs, meta)
    if have != want:
        return (f"{meta.name} was trained on {want[0]} layer {want[1]} {want[2]}, but the activation cache holds "
                f"{have[0]} layer {have[1]} {have[2]}; refusing to calibrate on it")
    return None


def calibration_targets(run_dir: Path, saes: list[str] | None = None) -> list[Path]:
    """The SAE folders to calibrate: the named ones (each must be of the BatchTopK family), else every
    BatchTopK-family SAE of the run."""
    folders = {p.name: p for p in list_sae_folders(run_dir)}
    if not saes:
        return [p for p in folders.values() if is_calibrated_family(SAEMeta.read(p).trainer)]
    unknown = [s for s in saes if s not in folders]
    if unknown:
        raise ConfigError(f"no finished SAE {unknown[0]!r} in {run_dir} (have: {', '.join(folders) or 'none'})")
    for name in saes:
        require_calibrated_family(name, SAEMeta.read(folders[name]).trainer)
    return [folders[s] for s in saes]


def calibrate(run_dir: str | Path, saes: list[str] | None = None, *, rows: int | None = None,
              cache_dir: str | Path | None = None) -> dict[str, ThresholdCalibration]:
    """Re-calibrate SAE folders of ``run_dir`` on its cache (or ``cache_dir``); returns the records."""
    from cache_tools import open_store

    run_dir = Path(run_dir)
    targets = calibration_targets(run_dir, saes)
    cache = Path(cache_dir) if cache_dir else run_dir / "cache"
    if not cache.exists():
        raise FileNotFoundError(f"no activation cache at {cache}: run the harvest stage first")
    store = open_store(cache)
    for folder in targets:  # every check before the first write
        error = _store_identity_error(store.attrs, SAEMeta.read(folder))
        if error:
            raise ConfigError(error)
    return {folder.name: calibrate_folder(folder, store, rows=rows) for folder in targets}
