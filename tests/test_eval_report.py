"""The report stage on the session's evaluated tiny run."""
from __future__ import annotations

import math
import re

import pytest

from eval.results import load
from tests.eval_helpers import SAE_SPECS, evaluated_run, tiny_config, write_training_artifacts


@pytest.fixture(scope="module")
def report_page():
    from pipeline.analysis.report import report

    run_dir = evaluated_run()
    for name, _, seed, *_ in SAE_SPECS:
        write_training_artifacts(run_dir / "saes" / name, seed=seed, with_splits=name.startswith("fc_"))
    return run_dir, report(tiny_config(), run_dir)


def _per_sae_cells(page: str) -> dict:
    # Rows are "<tr><th>sae</th><td data-value=...>..." under a header row of <th> names.
    table = re.search(r'<table id="per-sae">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    header = re.findall(r"<th>(.*?)</th>", rows[0])[1:]
    cells = {}
    for row in rows[1:]:
        sae = re.search(r"<th>(.*?)</th>", row).group(1)
        values = [float(v) for v in re.findall(r'data-value="([^"]+)"', row)]
        cells.update({(sae, col): v for col, v in zip(header, values)})
    return cells


def test_report_files_exist(report_page):
    run_dir, page_path = report_page
    assert page_path == run_dir / "report" / "index.html"
    page = page_path.read_text()
    for png in ("summary.png", "absorption_per_letter.png", "fc_scatter.png", "score_histograms.png",
                "split_events.png", "training_curves.png"):
        assert (run_dir / "report" / png).stat().st_size > 1000
        assert f'src="{png}"' in page


def test_report_table_equals_the_results_table(report_page):
    run_dir, page_path = report_page
    cells = _per_sae_cells(page_path.read_text())
    table = load(run_dir)
    ok = table[(table["status"] == "ok") & ~table["metric"].str.contains("/")]
    expected = {(r.sae, f"{r.eval}:{r.metric}"): r.value for r in ok.itertuples()}
    assert set(cells) == set(expected)
    for key, value in expected.items():
        assert cells[key] == value or (math.isnan(value) and math.isnan(cells[key])), key


def test_report_lists_skipped_evals(report_page):
    _, page_path = report_page
    page = page_path.read_text()
    assert 'id="not-evaluated"' in page and "scr" in page and "skipped" in page


def test_report_leads_with_the_frontier_and_keeps_the_folder_plots(report_page):
    _, page_path = report_page
    page = page_path.read_text()
    assert page.index('src="frontier.png"') < page.index("<h2>Verdict</h2>") < page.index("<table")
    assert "skipped: only the results table is here" not in page  # the SAE folders are there
