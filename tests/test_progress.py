"""Progress records and the terminal view: what a real tiny harvest and training write, the lines
the viewer draws from a run's records, and the closing summary (headline metrics only)."""
from __future__ import annotations

import io
import json
import sys
import time

import pytest

from fc_base.progress import (DONE, FAILED, MIN_INTERVAL_S, ON_DISK, PROGRESS_DIR, current_run_dir, read_records,
                              run_scope, stage_progress)


@pytest.fixture(scope="module")
def small_cfg(tiny_model_dir):
    from pipeline.config import resolve_config

    # The tiny preset at a quarter of its tokens and steps: one shuffle group, 32 training steps.
    return resolve_config("tiny", None, ["harvest.n_tokens=4096", "train.n_tokens=8192"])


@pytest.fixture(scope="module")
def trained_run(small_cfg, tmp_path_factory):
    from pipeline.harvest import harvest
    from pipeline.train import train

    run_dir = tmp_path_factory.mktemp("progress") / "run"
    harvest(small_cfg, run_dir, progress=False)
    train(small_cfg, run_dir, trainer="topk", progress=False)
    return run_dir


def _record(run_dir, key):
    return {r.key: r for r in read_records(run_dir)}[key]


def test_harvest_and_training_write_finished_records(trained_run, small_cfg):
    harvest = _record(trained_run, "harvest")
    assert (harvest.status, harvest.unit, harvest.total, harvest.done) == (DONE, "tok", 4096, 4096)
    assert harvest.started_at <= harvest.finished_at
    train = _record(trained_run, "train.topk_s0")
    steps = small_cfg.train.total_steps
    assert (train.status, train.unit, train.total, train.done, train.initial) == (DONE, "step", steps, steps, 0)
    assert train.label == "train topk_s0" and train.started_at <= train.finished_at


def test_work_found_on_disk_is_recorded_as_such(trained_run, small_cfg):
    from pipeline.harvest import harvest
    from pipeline.train import train

    before = time.time()
    harvest(small_cfg, trained_run, progress=False)
    train(small_cfg, trained_run, trainer="topk", progress=False)
    assert [(r.key, r.status) for r in read_records(trained_run, since=before)] == \
        [("harvest", ON_DISK), ("train.topk_s0", ON_DISK)]


def test_updates_inside_the_write_interval_still_land(tmp_path):
    with stage_progress("eval", 3, "task", run_dir=tmp_path) as p:
        for _ in range(3):
            p.update(1)  # three updates within one interval: the last is written when it ends
        time.sleep(MIN_INTERVAL_S + 0.2)
        assert _record(tmp_path, "eval").done == 3
        p.note("core · topk_s0")
    assert (_record(tmp_path, "eval").status, _record(tmp_path, "eval").note) == (DONE, "core · topk_s0")


def test_records_follow_the_run_scope_and_mark_failures(tmp_path):
    with stage_progress("eval.absorption-probe", 2) as p:  # outside any scope: nothing is written
        p.update(2)
    assert current_run_dir() is None and not (tmp_path / PROGRESS_DIR).exists()
    with run_scope(tmp_path), pytest.raises(RuntimeError):
        assert current_run_dir() == tmp_path
        with stage_progress("eval.absorption-probe", 2, "step", label="absorption probe") as p:
            p.update(1)
            raise RuntimeError("probe training failed")
    assert (_record(tmp_path, "eval.absorption-probe").status, _record(tmp_path, "eval.absorption-probe").done) \
        == (FAILED, 1)
    with pytest.raises(ValueError, match="progress key"):
        stage_progress("train/topk_s0", run_dir=tmp_path)


def _write_finished_run(run_dir):
    """Records of a whole run, written by the real writer: harvest, two SAEs, evals with the probe
    build inside, report."""
    with stage_progress("harvest", 16384, "tok", run_dir=run_dir, unit_scale=True) as p:
        p.update(16384)
    for name in ("topk_s0", "fc_topk_s0"):
        with stage_progress(f"train.{name}", 128, "step", run_dir=run_dir, label=f"train {name}") as p:
            p.update(128)
    with stage_progress("eval", 4, "task", run_dir=run_dir) as ev:
        with stage_progress("eval.absorption-probe", 2, "step", run_dir=run_dir, label="absorption probe") as p:
            p.update(2)
        ev.update(4)
    with stage_progress("report", 2, "step", run_dir=run_dir) as p:
        p.update(2)


def test_viewer_draws_one_line_per_stage_of_a_finished_run(tmp_path):
    from pipeline.progress import LiveView

    _write_finished_run(tmp_path)
    out = io.StringIO()
    LiveView(out, tty=False, width=100).draw(read_records(tmp_path), final=True)
    lines = out.getvalue().splitlines()
    assert [line.split("100%")[0].rstrip() for line in lines] == \
        ["harvest", "train topk_s0", "train fc_topk_s0", "eval", "  absorption probe", "report"]
    assert all(line.endswith("✓") and len(line) <= 100 for line in lines)
    assert "16.4k/16.4k" in lines[0] and "128/128" in lines[1] and "4/4" in lines[3]


def test_viewer_redraws_running_stages_with_an_eta(tmp_path):
    from pipeline.progress import LiveView

    with stage_progress("harvest", 100, "tok", run_dir=tmp_path) as p:
        p.update(100)
    train = stage_progress("train.topk_s0", 200, "step", run_dir=tmp_path, label="train topk_s0")
    train.update(50)
    time.sleep(MIN_INTERVAL_S + 0.1)  # the update is written when the write interval ends
    now = _record(tmp_path, "train.topk_s0").started_at + 10.0
    out = io.StringIO()
    view = LiveView(out, tty=True, width=120)
    view.draw(read_records(tmp_path), now)
    view.draw(read_records(tmp_path), now)
    first, second = out.getvalue().split("\x1b[1F")  # the second frame moves up over the one running line
    assert "harvest" in first and "✓" in first and "harvest" not in second  # an ended line stays above
    assert "50/200" in second and "ETA 00:30" in second and "5.00step/s" in second
    train.close()


def test_watch_runs_the_command_into_its_log_and_returns_its_status(tmp_path):
    from pipeline.progress import watch

    script = ("import sys; from fc_base.progress import stage_progress\n"
              f"with stage_progress('harvest', 10, 'tok', run_dir={str(tmp_path)!r}) as p: p.update(10)\n"
              "print('prefect event stream'); sys.exit(3)")
    out = io.StringIO()
    rc = watch(tmp_path, [sys.executable, "-c", script], tmp_path / "flow-run.log", out=out, poll_s=0.05)
    assert rc == 3
    assert "prefect event stream" in (tmp_path / "flow-run.log").read_text()
    words = out.getvalue().splitlines()[-1].split()  # off a terminal: the stage's end line comes last
    assert words[0] == "harvest" and words[1].startswith("100%") and "10/10" in words and words[-1] == "✓"


def _results_table(run_dir):
    from eval.results import make_rows, rows_frame, write_table
    from fc_base.sae_folder import SAEMeta

    rows = []
    for trainer, base in (("topk", 0.30), ("fc_topk", 0.20)):
        for seed in (0, 1):
            meta = SAEMeta(name=f"{trainer}_s{seed}", trainer=trainer, seed=seed, architecture="topk", k=8, d_in=64,
                           d_sae=256, model_name="EleutherAI/pythia-14m", model_source="tiny-random", layer=1,
                           hook_name="blocks.1.hook_resid_post", train_tokens=32768, l0_target=8.0, final_l0=8.0,
                           norm_scale=1.0)
            rows += make_rows(run_dir, meta, "absorption", {
                "mean_absorption_fraction_score": base + 0.02 * seed, "mean_absorption_fraction_score_eval_std": 0.011,
                "mean_full_absorption_score": base / 2, "mean_full_absorption_score_eval_std": 0.005,
                "mean_num_split_features": 1.25, "letter/a/absorption_rate": 0.9, "eval_seconds": 12.0})
            rows += make_rows(run_dir, meta, "core", {
                "explained_variance": 0.9999961, "explained_variance_legacy": 0.812 + 0.01 * seed,
                "ce_loss_score": 0.634, "l0": 8.0, "mse": 0.25})
    write_table(run_dir / "results.parquet", rows_frame(rows))


def test_summary_shows_headline_metrics_noise_and_stage_times(tmp_path):
    from pipeline.progress import summary_text

    _write_finished_run(tmp_path)
    _results_table(tmp_path)
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "index.html").write_text("<html></html>")
    text = summary_text(tmp_path, width=120)
    lines = text.splitlines()
    for stage in ("harvest", "train", "eval", "report"):
        assert any(line.split()[:1] == [stage] and " s" in line for line in lines), stage
    assert "(2 SAEs)" in text and "(4 tasks)" in text
    header = next(line for line in lines if "topk k=8 (2 seeds)" in line)
    assert header.index("topk k=8") < header.index("fc_topk k=8")  # the baseline first
    row = {line.split("  ")[1].strip(): line for line in lines if line.startswith("  ") and "±" in line}
    assert "0.310 ± 0.014 (eval ± 0.011)" in row["absorption fraction ↓"]
    assert "(eval ± 0.005)" in row["full absorption ↓"]
    assert "0.817 ± 0.007" in row["explained variance ↑"]  # the legacy one the report shows
    assert "0.634 ± 0.000" in row["CE-loss score ↑"] and "8.0 ± 0.0" in row["L0"]
    # sae-bench's raw explained_variance (1 ± 4e-06 on every SAE), MSE, timings and letters stay out
    assert "explained_variance" not in text and "1.000" not in text and "mse" not in text
    assert "eval_seconds" not in text and "letter" not in text
    assert f"report:        {tmp_path / 'report' / 'index.html'}" in lines


def test_summary_of_a_missing_run_is_one_error_line(tmp_path, capsys):
    from pipeline.progress import main

    assert main(["summary", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_records_are_plain_json(tmp_path):
    with stage_progress("report", 1, "step", run_dir=tmp_path) as p:
        p.update(1)
    data = json.loads((tmp_path / PROGRESS_DIR / "report.json").read_text())
    assert {"key", "label", "unit", "total", "done", "started_at", "finished_at", "status"} <= set(data)
