"""How well the tracker's per-latent statistics pick out latents an eval identified (absorbed parents on
ground truth, absorbing latents in sae-bench's first-letter task): one ROC AUC per statistic."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

HISTORY_STATISTICS = {"absorption_score": 1.0, "frequency": 1.0, "consistency": -1.0, "hole_rate": 1.0,
                      "hole_score": 1.0, "encoder_suppression": 1.0, "exclusion": 1.0}
"""fc_history columns scored (sign: higher means "more likely flagged"; consistency is flipped and
reported as inconsistency)."""


EARLY_FRACTIONS = (0.25, 0.5, 0.75)
"""Training fractions at which the statistics are also scored (``<metric>@25`` ...): how early a
statistic would have flagged the latents that end up absorbing or absorbed."""


def detection_aucs(history: pd.DataFrame, positives_M: np.ndarray, prefix: str = "detect_auc_",
                   fractions: tuple[float, ...] = EARLY_FRACTIONS) -> dict[str, float]:
    """ROC AUC of each recorded statistic at finding the ``positives_M`` latents: at the last snapshot
    (``<prefix><stat>``) and at the snapshots nearest to ``fractions`` of training
    (``<prefix><stat>@<percent>``). 0.5 is chance, below 0.5 means the statistic points the other way."""
    if history.empty:
        return {}
    positives_M = np.asarray(positives_M, dtype=bool)
    steps = np.sort(history["step"].unique())
    out = _aucs_at(history, int(steps[-1]), positives_M, prefix, "")
    for frac in fractions:
        step = int(steps[np.abs(steps - frac * steps[-1]).argmin()])
        if step != steps[-1]:
            out.update(_aucs_at(history, step, positives_M, prefix, f"@{round(frac * 100)}"))
    return out


def _aucs_at(history: pd.DataFrame, step: int, positives_M: np.ndarray, prefix: str, suffix: str) -> dict[str, float]:
    snap = history[history["step"] == step].sort_values("latent")
    out = {}
    for column, sign in HISTORY_STATISTICS.items():
        if column in snap and snap[column].notna().any():
            name = "inconsistency" if sign < 0 else column
            out[f"{prefix}{name}{suffix}"] = detection_auc(sign * snap[column].to_numpy(np.float64), positives_M)
    return out


def _average_ranks(x_N: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    _, inverse_N, counts_U = np.unique(x_N, return_inverse=True, return_counts=True)
    first_U = np.concatenate([[0], np.cumsum(counts_U)[:-1]])
    return (first_U + (counts_U + 1) / 2.0)[inverse_N]


def detection_auc(statistic_M: torch.Tensor | np.ndarray,
                  absorbed_latents_mask_M: torch.Tensor | np.ndarray) -> float:
    """ROC AUC of ``statistic_M`` (higher = more absorbed) for the mask; non-finite values are dropped."""
    stat_M = np.asarray(torch.as_tensor(statistic_M).detach().cpu(), dtype=np.float64)
    pos_M = np.asarray(torch.as_tensor(absorbed_latents_mask_M).cpu(), dtype=bool)
    keep_M = np.isfinite(stat_M)
    stat_M, pos_M = stat_M[keep_M], pos_M[keep_M]
    n_pos, n_neg = int(pos_M.sum()), int((~pos_M).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U of the positives, normalised to [0, 1].
    u = _average_ranks(stat_M)[pos_M].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
