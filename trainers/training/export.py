"""Writing a trained SAE: SAELens-loadable weights + cfg.json, and the tracker history beside them
(``fc_history.parquet``: its columns are defined here). The maintenance event tables
(``splits.parquet``, ``repairs.parquet``, ...) are declared by the surgery that logs them and written
by :mod:`trainers.training.events`."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from fc_base.io import write_atomic, write_json_atomic
from fc_base.sae_folder import SAELENS_CFG_FILE, WEIGHTS_FILE
from trainers.saes.sae import SparseAutoencoder

SAELENS_ARCHITECTURE = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu"}
HISTORY_COLUMNS = ["step", "latent", "frequency", "consistency", "absorption_score"]
"""The columns every fc_history.parquet has; trackers that keep more statistics add theirs
(hole_rate, hole_score, encoder_suppression)."""
@dataclass
class ModelInfo:
    """Where the activations came from (recorded in cfg.json and sae_meta.json)."""
    model_name: str
    model_source: str = "auto"
    layer: int = 0
    hook_name: str = ""
    extra_metadata: dict[str, Any] = field(default_factory=dict)


def _sae_lens_version() -> str:
    try:
        return metadata.version("sae-lens")
    except metadata.PackageNotFoundError:
        return "6.0.0"


def export_sae(model: SparseAutoencoder, out_dir: Path, norm_scale: float, info: ModelInfo) -> None:
    """Write sae_weights.safetensors and cfg.json (normalisation folded into the weights)."""
    tensors = model.export_tensors(norm_scale)
    bad = [name for name, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"refusing to export an SAE with inf/NaN in {', '.join(bad)}")
    write_atomic(out_dir / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    version = _sae_lens_version()
    cfg: dict[str, Any] = {
        "architecture": SAELENS_ARCHITECTURE[model.architecture],
        "d_in": model.d_in, "d_sae": model.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "metadata": {"sae_lens_version": version, "sae_lens_training_version": version,
                     "model_name": info.model_name, "hook_name": info.hook_name, "hook_head_index": None,
                     "prepend_bos": True, "model_from_pretrained_kwargs": {}, **info.extra_metadata},
    }
    if model.architecture == "topk":
        cfg.update(k=model.k, rescale_acts_by_decoder_norm=False)
    write_json_atomic(out_dir / SAELENS_CFG_FILE, cfg)


def history_frame(history: list[dict[str, np.ndarray]], d_sae: int) -> pd.DataFrame:
    """fc_history.parquet from the tracker snapshots (one dict of per-latent arrays per step)."""
    if not history:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("step", "latent") else "float32")
                             for c in HISTORY_COLUMNS})
    names = [k for k in history[0] if k != "step"]
    return pd.DataFrame({
        "step": np.repeat(np.array([h["step"] for h in history], dtype=np.int64), d_sae),
        "latent": np.tile(np.arange(d_sae, dtype=np.int64), len(history)),
        **{name: np.concatenate([h[name] for h in history]).astype(np.float32) for name in names},
    })
