"""Held-out rows: the last ``train.heldout_rows`` rows of the activation source, which training never
reads, scored at every log step (explained variance, MSE, L0, dead fraction).

Training gets ``source.head(n_rows - heldout_rows)``: a view that ends before the held-out rows, so
the batches, the normalisation rows, the reservoir and the threshold calibration all come from the
rows before them. With ``heldout_rows = 0`` (the default) the loop gets the source itself and reads
exactly what it read before this option existed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from fc_base.errors import ConfigError

if TYPE_CHECKING:
    from trainers.saes.sae import SparseAutoencoder
    from trainers.training.data import ActivationSource

HELDOUT_PREFIX = "heldout_"
"""Held-out keys in train_log.jsonl: ``heldout_explained_variance``, ``heldout_mse``, ``heldout_l0``,
``heldout_dead_frac``."""
SCORE_BATCH_ROWS = 8192


def split_heldout(source: "ActivationSource", heldout_rows: int, batch_size: int
                  ) -> tuple["ActivationSource", torch.Tensor | None]:
    """(what training reads, the held-out rows as float32 (H, D) or None without them)."""
    if heldout_rows == 0:
        return source, None
    train_rows = source.n_rows - heldout_rows
    if train_rows < batch_size:
        raise ConfigError(f"train.heldout_rows={heldout_rows} leaves {max(train_rows, 0)} of the cache's "
                          f"{source.n_rows} rows for training, fewer than train.batch_size={batch_size}")
    heldout_HD = torch.from_numpy(np.ascontiguousarray(source.read_rows(train_rows, source.n_rows), dtype=np.float32))
    if not torch.isfinite(heldout_HD).all():
        raise ValueError("the held-out rows of the activation cache hold inf/NaN values")
    return source.head(train_rows), heldout_HD


@torch.no_grad()
def heldout_scores(model: "SparseAutoencoder", heldout_HD: torch.Tensor, norm_scale: float,
                   device: torch.device) -> dict[str, float]:
    """The SAE's inference codes (``model.encode``) on the held-out rows, scaled as training scales its
    batches: explained variance (1 - squared error / total variance about the rows' mean), MSE (squared
    error per row, as the training log's ``mse``), L0 (mean active latents per row) and the fraction
    of latents that fire on none of the rows."""
    err = 0.0
    l0 = 0.0
    fired_M = torch.zeros(model.d_sae, dtype=torch.bool, device=device)
    total_D = torch.zeros(heldout_HD.shape[1], dtype=torch.float64, device=device)
    sq_D = torch.zeros_like(total_D)
    for lo in range(0, len(heldout_HD), SCORE_BATCH_ROWS):
        x_BD = heldout_HD[lo:lo + SCORE_BATCH_ROWS].to(device) * norm_scale
        codes_BM = model.encode(x_BD)
        err += float((model.decode(codes_BM) - x_BD).pow(2).sum())
        active_BM = codes_BM != 0
        l0 += float(active_BM.sum())
        fired_M |= active_BM.any(0)
        total_D += x_BD.double().sum(0)
        sq_D += x_BD.double().pow(2).sum(0)
    n = len(heldout_HD)
    variance = float((sq_D - total_D.pow(2) / n).sum().clamp_min(1e-12))
    return {f"{HELDOUT_PREFIX}explained_variance": 1.0 - err / variance, f"{HELDOUT_PREFIX}mse": err / n,
            f"{HELDOUT_PREFIX}l0": l0 / n, f"{HELDOUT_PREFIX}dead_frac": float((~fired_M).float().mean())}
