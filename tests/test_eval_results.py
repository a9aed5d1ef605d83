"""The long results table: task files, atomic merge, re-runs replacing their rows, the pivot."""
from __future__ import annotations

import math
import subprocess
import sys
import time

import pandas as pd
import pytest

from eval.config import EvalConfig, EvalConfigError
from eval.results import (COLUMNS, NAN_REASON, RECORDED_PACKAGES, RESULTS_FILE, ResultsError, Skipped,
                          aggregate_tasks, format_table, load, make_rows, package_versions, pivot, problems,
                          rows_frame, skipped_metrics, task_path, write_table, write_task)
from eval.sae import SAEMeta


def _meta(trainer: str, seed: int) -> SAEMeta:
    return SAEMeta(name=f"{trainer}_s{seed}", trainer=trainer, seed=seed, architecture="topk", k=8, d_in=64,
                   d_sae=128, model_name="m", model_source="auto", layer=1, hook_name="blocks.1.hook_resid_post",
                   train_tokens=1000, l0_target=8.0, final_l0=8.1, norm_scale=1.0)


def _task(run_dir, trainer, seed, eval_name, metrics, **kw):
    meta = _meta(trainer, seed)
    rows = make_rows(run_dir, meta, eval_name, metrics, **kw)
    return write_task(task_path(run_dir, meta.name, eval_name), rows)


def test_aggregate_merges_tasks_and_reruns_replace_only_their_rows(tmp_path):
    run = tmp_path / "myrun"
    _task(run, "topk", 0, "core", {"mse": 1.0, "l0": 8.0})
    _task(run, "topk", 0, "absorption", {"mean_absorption_fraction_score": 0.3, "letter/a/probe_f1": 0.9})
    _task(run, "fc_topk", 0, "scr", {}, status="skipped", error="needs the Hub")
    df = load(aggregate_tasks(run).parent)
    assert list(df.columns) == list(COLUMNS) and len(df) == 5
    assert set(df["run"]) == {"myrun"}
    skipped = df[df["eval"] == "scr"].iloc[0]
    assert skipped["status"] == "skipped" and skipped["error"] == "needs the Hub" and math.isnan(skipped["value"])
    # a re-run of one eval replaces its rows only; rows without a task file any more are kept
    (task_path(run, "topk_s0", "absorption")).unlink()
    _task(run, "topk_s0".split("_s")[0], 0, "core", {"mse": 0.5})
    df = load(aggregate_tasks(run).parent)
    core = df[df["eval"] == "core"]
    assert core["metric"].tolist() == ["mse"] and core["value"].tolist() == [0.5]
    assert "mean_absorption_fraction_score" in set(df["metric"])  # kept from the previous table


def test_failed_write_leaves_the_old_table(tmp_path):
    run = tmp_path / "r"
    _task(run, "topk", 0, "core", {"mse": 1.0})
    path = aggregate_tasks(run)
    before = pd.read_parquet(path)
    broken = before.assign(value=[object()])  # pyarrow cannot store this column
    with pytest.raises(Exception):
        write_table(path, broken)
    pd.testing.assert_frame_equal(pd.read_parquet(path), before)
    assert sorted(p.name for p in run.iterdir()) == ["eval", RESULTS_FILE]  # no temp file left behind


_WRITER = """
import sys, pandas as pd
from eval.results import write_table
n = int(sys.argv[2])
df = pd.DataFrame({"sae": ["new"] * n, "value": range(n)})
while True:
    write_table(sys.argv[1], df)
"""


def test_killed_writer_never_leaves_a_half_written_table(tmp_path):
    path = tmp_path / RESULTS_FILE
    old = pd.DataFrame({"sae": ["old"], "value": [1]})
    write_table(path, old)
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "2000000"])
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(f".{RESULTS_FILE}.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.kill()  # mid-write (or between writes): either way the table must be whole
    finally:
        proc.wait()
    table = pd.read_parquet(path)
    assert table["sae"].iloc[0] in ("old", "new") and len(table) in (1, 2000000)
    if table["sae"].iloc[0] == "new":
        assert table["value"].iloc[-1] == 1999999


def test_pivot_and_text_table_give_mean_and_spread_over_seeds(tmp_path):
    run = tmp_path / "r"
    _task(run, "topk", 0, "core", {"mse": 1.0})
    _task(run, "topk", 1, "core", {"mse": 3.0})
    _task(run, "fc_topk", 0, "core", {"mse": 0.5, "letter/a/x": 7.0})
    _task(run, "fc_topk", 1, "core", {}, status="failed", error="RuntimeError: boom")
    df = load(aggregate_tasks(run).parent)
    table = pivot(df)
    assert table[("core:mse", "mean")]["topk"] == 2.0
    assert table[("core:mse", "std")]["topk"] == pytest.approx(2 ** 0.5)
    assert table[("core:mse", "count")]["fc_topk"] == 1
    assert "core:letter/a/x" not in {c[0] for c in table.columns}
    text = format_table(df)
    assert "2 ± 1.414 (n=2)" in text and "0.5 (n=1)" in text
    assert "fc_topk_s1 / core: failed: RuntimeError: boom" in text


def test_a_metric_without_a_value_is_a_skipped_row_with_its_reason_never_ok(tmp_path):
    run = tmp_path / "r"
    _task(run, "topk", 0, "absorption", {
        "mean_absorption_fraction_score": 0.3, "letter/a/absorption_fraction": 0.2,
        "letter/v/absorption_fraction": Skipped("first letter 'v': probe F1 0.41 is not above 0.6"),
        "detect_auc_main_frequency": float("nan"), "odd": "text"})
    _task(run, "topk", 1, "absorption", {"mean_absorption_fraction_score": 0.5,
                                         "letter/v/absorption_fraction": Skipped("first letter 'v': no word")})
    _task(run, "fc_topk", 0, "scr", {}, status="skipped", error="needs the Hub")
    df = load(aggregate_tasks(run).parent)
    ok = df[df["status"] == "ok"]
    assert ok["value"].notna().all() and len(ok) == 3
    rows = df[df["sae"] == "topk_s0"].set_index("metric")
    assert rows.loc["letter/v/absorption_fraction", "status"] == "skipped"
    assert rows.loc["letter/v/absorption_fraction", "error"] == "first letter 'v': probe F1 0.41 is not above 0.6"
    assert rows.loc["detect_auc_main_frequency", "error"] == NAN_REASON
    assert rows.loc["odd", "status"] == "skipped" and "not a number: 'text'" in rows.loc["odd", "error"]
    assert rows["value"].drop(["mean_absorption_fraction_score", "letter/a/absorption_fraction"]).isna().all()
    # whole tasks that did not run are the problems; single metrics without a value are listed apart
    assert problems(df)[["sae", "eval", "status"]].values.tolist() == [["fc_topk_s0", "scr", "skipped"]]
    assert len(skipped_metrics(df)) == 4
    assert pivot(df)[("absorption:mean_absorption_fraction_score", "mean")]["topk"] == pytest.approx(0.4)
    text = format_table(df)
    assert "fc_topk_s0 / scr: skipped: needs the Hub" in text
    assert "absorption: 1 rows over 1 SAEs: first letter 'v': no word" in text
    assert f"absorption: 1 rows over 1 SAEs: {NAN_REASON}" in text
    assert "letter/" not in text


def test_every_row_records_the_package_versions(tmp_path):
    import importlib.metadata as md
    import json

    run = tmp_path / "r"
    _task(run, "topk", 0, "core", {"mse": 1.0}, eval_config={"llm_dtype": "float32"})
    _task(run, "topk", 1, "core", {}, status="failed", error="RuntimeError: boom")
    _task(run, "topk", 2, "core", {"mse": Skipped("why")})
    df = load(aggregate_tasks(run).parent)
    assert RECORDED_PACKAGES == ("sae-bench", "sae-lens", "torch", "transformers")
    installed = {name: md.version(name) for name in RECORDED_PACKAGES}
    assert package_versions() == installed
    for config in df["eval_config"]:
        assert json.loads(config)["packages"] == installed
    assert json.loads(df[df["seed"] == 0]["eval_config"].iloc[0])["llm_dtype"] == "float32"


def test_missing_table_and_bad_rows_raise_clear_errors(tmp_path):
    with pytest.raises(ResultsError, match="no results table"):
        load(tmp_path)
    with pytest.raises(ResultsError, match="status must be one of"):
        make_rows(tmp_path, _meta("topk", 0), "core", {}, status="done")
    assert rows_frame([]).columns.tolist() == list(COLUMNS)


@pytest.mark.parametrize("kwargs, message", [
    ({"evals": ["absorption", "nope"]}, "unknown eval 'nope'"),
    ({"evals": ["core", "core"]}, "lists an eval twice"),
    ({"options": {"absorption": {"word_sample": 10}}}, "absorption.word_sample must be None"),
    ({"llm_dtype": "int8"}, "llm_dtype must be one of"),
    ({"options": {"core": {"reconstruction_batches": 0}}}, "core.reconstruction_batches must be a positive integer"),
        ({"options": {"core": {"nope": 1}}}, "unknown config field eval.options.core.nope"),
        ({"options": {"nope": {}}}, "unknown config field eval.options.nope"),
    ({"options": {"absorption": {"min_letters": 27}}}, "absorption.min_letters must be in 1..26"),
    ({"options": {"sae_probes": {"ks": [0]}}}, "sae_probes.ks must be positive"),
])
def test_eval_config_rejects_bad_values(kwargs, message):
    with pytest.raises(EvalConfigError, match=message):
        EvalConfig(**kwargs)


def test_eval_settings_of_the_presets_validate():
    from pipeline.config import get_preset

    for name in ("demo", "pythia70m", "tiny"):
        assert get_preset(name).eval.evals
    assert get_preset("pythia70m").eval.options["absorption"]["word_sample"] is None
