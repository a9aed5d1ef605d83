"""Seed-paired comparisons against a baseline trainer."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from eval.compare import comparison_markdown, paired_comparison, t975


def _table(values: dict[tuple[str, int], float]) -> pd.DataFrame:
    return pd.DataFrame([{"trainer": t, "seed": s, "eval": "synthetic", "metric": "f1", "value": v, "status": "ok"}
                         for (t, s), v in values.items()])


def test_paired_differences_and_interval_match_a_hand_computation():
    table = _table({("topk", 0): 0.50, ("topk", 1): 0.52, ("topk", 2): 0.48,
                    ("fc", 0): 0.55, ("fc", 1): 0.58, ("fc", 2): 0.50, ("fc", 3): 0.99})
    cmp = paired_comparison(table, ["f1"], "topk").set_index("trainer")
    diffs = [0.05, 0.06, 0.02]  # seed 3 has no topk partner
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert cmp.loc["fc", "n_pairs"] == 3 and cmp.loc["fc", "diff"] == pytest.approx(mean)
    assert cmp.loc["fc", "ci_low"] == pytest.approx(mean - t975(2) * sd / math.sqrt(3))
    assert cmp.loc["fc", "n"] == 4 and math.isnan(cmp.loc["topk", "diff"])
    text = comparison_markdown(paired_comparison(table, ["f1"], "topk"), ["f1"], "topk")
    assert "| fc (n=4) |" in text and "Δ +0.043" in text
