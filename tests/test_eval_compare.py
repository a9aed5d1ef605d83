"""Seed-paired comparisons against a baseline trainer."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from pipeline.analysis.compare import comparison_markdown, paired_comparison, t975


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


def _absorption_table(shift: float, *, noise: float = 0.01, letters: int = 26, ks=(16, 32)) -> pd.DataFrame:
    """topk and an arm at two k, 3 seeds, per-letter absorption values; the arm is lower by ``shift``."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for k in ks:
        for trainer, offset in (("topk", 0.0), ("fc2sup_topk", -shift), ("random_repair_topk", 0.0)):
            for seed in range(3):
                per_letter = 0.3 + offset + noise * rng.standard_normal(letters)
                base = {"trainer": trainer, "seed": seed, "k": k, "eval": "absorption", "status": "ok"}
                rows += [{**base, "metric": f"letter/{chr(97 + i)}/absorption_fraction", "value": float(v)}
                         for i, v in enumerate(per_letter)]
                rows.append({**base, "metric": "mean_absorption_fraction_score", "value": float(per_letter.mean())})
                rows.append({**base, "metric": "mean_absorption_fraction_score_eval_std", "value": 0.02})
                rows.append({**base, "metric": "explained_variance_legacy", "value": 0.9 + 0.001 * seed})
    return pd.DataFrame(rows)


def test_absorption_intervals_bootstrap_over_seeds_and_letters_and_pair_only_within_k():
    cmp = paired_comparison(_absorption_table(0.05), ["mean_absorption_fraction_score"], "topk")
    arm = cmp[cmp["trainer"] == "fc2sup_topk"].set_index("k")
    assert list(arm.index) == [16, 32] and (arm["n_pairs"] == 3).all()
    assert (arm["ci_kind"] == "bootstrap seeds x letters").all()
    assert (arm["ci_high"] < 0).all() and (arm["ci_low"] < arm["diff"]).all() and (arm["diff"] < arm["ci_high"]).all()
    assert arm.loc[16, "diff"] == pytest.approx(-0.05, abs=0.01)
    assert list(arm["eval_std"]) == pytest.approx([0.02, 0.02])
    same = paired_comparison(_absorption_table(0.0), ["mean_absorption_fraction_score"], "topk")
    null = same[same["trainer"] == "fc2sup_topk"]
    assert ((null["ci_low"] < 0) & (null["ci_high"] > 0)).all()  # no difference: the interval holds 0


def test_results_md_words_the_verdict_from_the_intervals_and_regenerates_identically(tmp_path):
    from pipeline.analysis.results_md import Study, render, verdicts

    table = _absorption_table(0.05)
    table["model"] = "m"
    study = Study("t", table, "x.parquet", "make run", "absorption", "mean_absorption_fraction_score",
                  "explained_variance_legacy", "absorption", plot="frontier.png")
    lines = verdicts(study)
    assert any("`fc2sup_topk` at k=32 lowers absorption beyond both" in line for line in lines)
    weak = _absorption_table(0.05)
    weak.loc[weak["trainer"] == "random_repair_topk", "value"] -= 0.05  # the control does just as well
    assert any("not against its control" in line
               for line in verdicts(Study("t", weak, "x", "c", "absorption", "mean_absorption_fraction_score",
                                          "explained_variance_legacy", "absorption")))
    broken = _absorption_table(0.05)
    broken.loc[(broken["trainer"] == "fc2sup_topk") & (broken["metric"] == "explained_variance_legacy"), "value"] -= 0.5
    assert any("a reconstruction cost" in line and "`fc2sup_topk` at k=32" in line
               for line in verdicts(Study("t", broken, "x", "c", "absorption", "mean_absorption_fraction_score",
                                          "explained_variance_legacy", "absorption")))
    first = render([study], tmp_path / "RESULTS.md", "fc-sae results-md ...")
    assert (tmp_path / "frontier.png").is_file() and "![frontier](frontier.png)" in first
    assert "| mean_absorption_fraction_score | 0.020 |" in first  # the noise floor table
    assert render([study], tmp_path / "RESULTS.md", "fc-sae results-md ...") == first


def test_committed_results_md_regenerates_from_the_committed_tables(tmp_path, monkeypatch):
    """RESULTS.md is what `make results` writes from the tables under results/: nothing hand-typed."""
    import re
    import shutil
    from pathlib import Path

    from pipeline.cli import main

    root = Path(__file__).resolve().parents[1]
    committed = (root / "RESULTS.md").read_text()
    command = re.search(r"```\n(fc-sae results-md [^\n]+)\n```", committed).group(1)
    monkeypatch.chdir(tmp_path)  # the command names results/... and RESULTS.md relative to the checkout
    shutil.copytree(root / "results", tmp_path / "results")
    assert main(command.split()[1:]) == 0
    assert (tmp_path / "RESULTS.md").read_text() == committed


def test_a_penalty_sae_is_compared_at_the_l0_its_weight_was_calibrated_for():
    table = _absorption_table(0.0, ks=(16, 32))
    relu = table[table["trainer"] == "random_repair_topk"].assign(trainer="relu_l1", l0_target=table["k"], k=None)
    table = pd.concat([table.assign(l0_target=table["k"]), relu], ignore_index=True)
    cmp = paired_comparison(table, ["mean_absorption_fraction_score"], "topk")
    arm = cmp[cmp["trainer"] == "relu_l1"].set_index("k")
    assert list(arm.index) == [16, 32] and (arm["n_pairs"] == 3).all()
    uncalibrated = paired_comparison(table.assign(l0_target=None), ["mean_absorption_fraction_score"], "topk")
    assert list(uncalibrated.loc[uncalibrated["trainer"] == "relu_l1", "k"]) == [-1]  # beside no TopK point


@pytest.mark.parametrize("dof, quantile", [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (11, 2.201),
                                           (15, 2.131), (20, 2.086), (25, 2.060), (30, 2.042), (60, 2.000),
                                           (120, 1.980)])
def test_t_quantiles_are_students_at_every_degree_of_freedom(dof, quantile):
    assert t975(dof) == pytest.approx(quantile, abs=6e-4)  # printed two-sided 95% tables


def test_t_interval_over_twelve_seed_pairs_uses_the_quantile_for_eleven_degrees_of_freedom():
    import numpy as np

    diffs = np.array([0.05, 0.06, 0.02, 0.04, 0.07, 0.01, 0.03, 0.05, 0.06, 0.02, 0.04, 0.08])
    table = _table({**{("topk", s): 0.5 for s in range(12)}, **{("fc", s): 0.5 + d for s, d in enumerate(diffs)}})
    row = paired_comparison(table, ["f1"], "topk").set_index("trainer").loc["fc"]
    half = 2.201 * diffs.std(ddof=1) / math.sqrt(12)
    assert row["ci_kind"] == "t over seeds" and row["n_pairs"] == 12
    assert row["ci_low"] == pytest.approx(diffs.mean() - half, abs=1e-4)
    assert row["ci_high"] == pytest.approx(diffs.mean() + half, abs=1e-4)


def test_bootstrap_leaves_out_letters_no_seed_pair_scored():
    """A letter the baseline never scored (skipped rows) is no observation: the interval is the one
    without that letter at all."""
    table = _absorption_table(0.05)
    letter_z = table["metric"] == "letter/z/absorption_fraction"
    one_side = table[~(letter_z & (table["trainer"] == "topk"))]  # z scored for the arms, not the baseline
    neither = table[~letter_z]
    metric = ["mean_absorption_fraction_score"]
    a = paired_comparison(one_side, metric, "topk").set_index(["trainer", "k"])
    b = paired_comparison(neither, metric, "topk").set_index(["trainer", "k"])
    assert (a["ci_kind"] == "").sum() == 2  # the baseline rows
    pd.testing.assert_frame_equal(a[["ci_low", "ci_high"]], b[["ci_low", "ci_high"]])
    assert a.loc[("fc2sup_topk", 16), "ci_high"] < 0


def test_one_seed_verdicts_set_the_difference_against_the_eval_noise_and_say_the_seed_spread_is_unmeasured():
    from pipeline.analysis.results_md import Study, verdicts

    table = _absorption_table(0.10, ks=(32,))
    table = table[table["seed"] == 0].copy()
    twin = table[table["trainer"] == "topk"].copy()
    twin["trainer"] = "matryoshka"  # an architecture equal to the baseline, one seed
    table = pd.concat([table, twin], ignore_index=True)
    study = Study("t", table, "x", "c", "absorption", "mean_absorption_fraction_score",
                  "explained_variance_legacy", "absorption")
    lines = verdicts(study)
    arm = next(line for line in lines if line.startswith("- `fc2sup_topk`"))
    # Δ -0.10 against a combined eval noise of hypot(0.02, 0.02) = 0.028: beyond twice the noise.
    assert "one seed" in arm and "beyond twice the eval's own noise (± 0.028)" in arm
    other = next(line for line in lines if line.startswith("- `matryoshka`"))
    assert "within twice the eval's own noise" in other and "one seed" in other


def test_the_closing_summary_says_what_the_differences_mean(tmp_path):
    from pipeline.progress import summary_text

    table = _absorption_table(0.10, ks=(32,))
    for column, value in (("run", "r"), ("sae", "x"), ("model", "m"), ("layer", 5), ("hook", "h"), ("d_sae", 64),
                          ("l0_target", 32), ("train_tokens", 1), ("error", ""), ("eval_config", "{}"),
                          ("created_at", "")):
        table[column] = value
    table["sae"] = table["trainer"] + "_s" + table["seed"].astype(str)
    table.to_parquet(tmp_path / "results.parquet")
    text = summary_text(tmp_path)
    assert "what the differences mean (mean_absorption_fraction_score, each arm against topk at the same L0):" in text
    assert "fc2sup_topk at k=32 lowers absorption beyond both the baseline's and its control's noise" in text
