"""How well the tracker's per-latent statistics pick out latents an eval identified (absorbed parents on
ground truth, absorbing latents in sae-bench's first-letter task): one ROC AUC per statistic."""
from __future__ import annotations

import numpy as np
import pandas as pd

HISTORY_STATISTICS = {"absorption_score": 1.0, "frequency": 1.0, "consistency": -1.0, "hole_rate": 1.0,
                      "hole_score": 1.0, "encoder_suppression": 1.0}
"""fc_history columns scored (sign: higher means "more likely flagged"; consistency is flipped and
reported as inconsistency)."""


def detection_aucs(history: pd.DataFrame, positives_M: np.ndarray, prefix: str = "detect_auc_") -> dict[str, float]:
    """ROC AUC of each recorded statistic (its last snapshot) at finding the ``positives_M`` latents;
    0.5 is chance, below 0.5 means the statistic points the other way."""
    from eval.synthetic_metrics import detection_auc

    if history.empty:
        return {}
    positives_M = np.asarray(positives_M, dtype=bool)
    last = history[history["step"] == history["step"].max()].sort_values("latent")
    out = {}
    for column, sign in HISTORY_STATISTICS.items():
        if column in last and last[column].notna().any():
            name = "inconsistency" if sign < 0 else column
            out[f"{prefix}{name}"] = detection_auc(sign * last[column].to_numpy(np.float64), positives_M)
    return out
