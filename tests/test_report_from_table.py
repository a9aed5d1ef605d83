"""The report page from a results table alone (no SAE folders), and the frontier's plot data."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from pipeline.analysis.plots import FRONTIER_METRICS, frontier_data

COMMITTED = Path(__file__).resolve().parents[1] / "results" / "experiment-f32-k32" / "results.parquet"


@pytest.fixture(scope="module")
def committed_page(tmp_path_factory):
    """The page of the committed float32 k-32 table, rendered by the module entry point elsewhere."""
    from pipeline.analysis.report import main

    out = tmp_path_factory.mktemp("report")
    assert main([str(COMMITTED), "--out", str(out)]) == 0
    return out, (out / "index.html").read_text()


def test_the_frontier_leads_then_the_verdict_then_the_tables(committed_page):
    _, page = committed_page
    frontier, verdict, first_table = page.index('src="frontier.png"'), page.index("<h2>Verdict</h2>"), page.index("<table")
    assert frontier < verdict < first_table
    assert page.index('src="frontier.png"') < page.index('src="summary.png"')  # the other plots come later


def test_every_table_is_collapsed(committed_page):
    _, page = committed_page
    for hit in re.finditer("<table", page):
        before = page[:hit.start()]
        assert before.count("<details>") == before.count("</details>") + 1, "a table outside <details>"


def test_a_results_table_alone_renders_with_a_note_for_the_folder_plots(committed_page):
    out, page = committed_page
    assert (out / "frontier.png").stat().st_size > 10_000
    assert "skipped: only the results table is here" in page
    assert 'src="fc_scatter.png"' not in page and 'src="training_curves.png"' not in page
    assert "<code>batchtopk</code> at k=32" in page and "<code>matryoshka</code> at k=32" in page  # the verdict
    assert not (COMMITTED.parent / "report").exists()  # --out: nothing written beside the committed table


def _table(measured: dict[str, list[float]]) -> pd.DataFrame:
    """Two trainers at k 32, 3 seeds: absorption with its eval noise, core with the measured L0."""
    rows = []
    for trainer, l0s in measured.items():
        for seed, l0 in enumerate(l0s):
            base = {"trainer": trainer, "seed": seed, "k": 32, "status": "ok"}
            rows += [{**base, "eval": "absorption", "metric": "mean_absorption_fraction_score", "value": 0.4 + 0.1 * seed},
                     {**base, "eval": "absorption", "metric": "mean_absorption_fraction_score_eval_std", "value": 0.01 * (seed + 1)},
                     {**base, "eval": "core", "metric": "explained_variance_legacy", "value": 0.9},
                     {**base, "eval": "core", "metric": "l0", "value": l0}]
    return pd.DataFrame(rows)


def test_the_frontier_sits_at_the_measured_l0_with_seed_and_eval_noise_bars():
    data = frontier_data(_table({"topk": [32.0, 32.0, 32.0], "batchtopk": [20.0, 21.0, 22.0]}), FRONTIER_METRICS)
    point = data.set_index(["name", "trainer"]).loc[("absorption:mean_absorption_fraction_score", "batchtopk")]
    assert point["l0"] == pytest.approx(21.0) and point["l0_std"] == pytest.approx(1.0) and point["l0_measured"]
    assert point["mean"] == pytest.approx(0.5) and point["std"] == pytest.approx(0.1)  # over seeds
    assert point["eval_std"] == pytest.approx(0.02)  # the eval's own noise, mean over the seeds' SAEs
    reconstruction = data.set_index(["name", "trainer"]).loc[("core:explained_variance_legacy", "batchtopk")]
    assert reconstruction["l0"] == pytest.approx(21.0) and math.isnan(reconstruction["eval_std"])


def test_without_a_measured_l0_the_frontier_falls_back_to_k_and_says_so():
    table = _table({"topk": [32.0, 32.0, 32.0]})
    data = frontier_data(table[table["metric"] != "l0"], FRONTIER_METRICS)
    assert (data["l0"] == 32.0).all() and not data["l0_measured"].any()
