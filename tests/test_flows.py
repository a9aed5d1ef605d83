"""The Prefect flow end to end on the tiny preset, against a real (temporary) Prefect server."""

import pytest


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def flow_run_dir(prefect_server, tmp_path_factory, tiny_model_dir):
    from flows.fc_sae_flow import fc_sae

    run_dir = tmp_path_factory.mktemp("flow") / "tiny"
    results = fc_sae(preset="tiny", run_dir=str(run_dir), stages="full")
    assert results.endswith("results.parquet")
    return run_dir


def _stamps(run_dir):
    files = sorted((run_dir / "cache").rglob("*")) + sorted((run_dir / "saes").rglob("*"))
    return {str(p): p.stat().st_mtime_ns for p in files if p.is_file()}


def test_full_flow_lands_results_for_topk_and_fc_topk(flow_run_dir):
    from eval.results import load

    df = load(flow_run_dir)
    assert {"topk", "fc_topk"} <= set(df["trainer"])
    ok = df[df["status"] == "ok"]
    assert set(ok["trainer"]) >= {"topk", "fc_topk"}
    assert (flow_run_dir / "report" / "index.html").is_file()
    assert (flow_run_dir / "cache" / "manifest.jsonl").is_file()


def test_full_flow_leaves_a_finished_progress_record_per_stage(flow_run_dir):
    from fc_base.progress import read_records

    saes = sorted(d.name for d in (flow_run_dir / "saes").iterdir() if d.is_dir())
    records = {r.key: r for r in read_records(flow_run_dir)}
    wanted = {"harvest", "eval", "report", "eval.absorption-probe", *(f"train.{name}" for name in saes)}
    assert wanted <= set(records), sorted(records)
    assert all(records[key].status == "done" for key in wanted), {k: records[k].status for k in wanted}
    assert records["harvest"].done == records["harvest"].total


def test_eval_only_flow_does_not_repeat_harvest_or_training(flow_run_dir):
    from eval.results import load
    from flows.fc_sae_flow import fc_sae

    before = _stamps(flow_run_dir)
    for task_json in (flow_run_dir / "eval").rglob("*.json"):
        task_json.unlink()  # force the evals themselves to run again
    (flow_run_dir / "results.parquet").unlink()
    fc_sae(preset="tiny", run_dir=str(flow_run_dir), stages="eval")
    assert _stamps(flow_run_dir) == before
    df = load(flow_run_dir)
    assert {"topk", "fc_topk"} <= set(df["trainer"])


def test_eval_only_without_a_run_fails_clearly(prefect_server, tmp_path):
    from flows.fc_sae_flow import fc_sae

    with pytest.raises(Exception, match="no config.json"):
        fc_sae(preset="tiny", run_dir=str(tmp_path / "empty"), stages="eval")


def _absorption_values(task_json):
    from eval.results import read_task

    rows = read_task(task_json)["rows"]
    assert rows and all(r["status"] in ("ok", "skipped") for r in rows), rows[:1]
    assert any(r["status"] == "ok" for r in rows)
    return {r["metric"]: r["value"] if r["status"] == "ok" else (r["status"], r["error"])
            for r in rows if r["metric"] != "eval_seconds"}


def test_absorption_rows_are_identical_in_the_cli_and_inside_a_busy_flow(prefect_server, tmp_path, tiny_model_dir):
    """sae-bench's prompting and probing draw from process-wide RNGs; other tasks of a flow draw from
    them at the same time. The eval must not care: same SAE and config, same rows."""
    import random
    import time

    import torch
    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    from pipeline.evaluate import run_eval_task
    from tests.eval_helpers import make_run, tiny_config

    cfg = tiny_config()
    specs = (("topk_s0", "topk", 0, "topk", 1.0),)
    plain = run_eval_task(cfg, make_run(tmp_path / "plain", specs), "topk_s0", "absorption")

    @task
    def draw_noise(seconds: float) -> int:
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            random.random()
            torch.rand(1)
            n += 1
            time.sleep(0.001)
        return n

    @task
    def absorption(run_dir: str) -> str:
        return str(run_eval_task(cfg, run_dir, "topk_s0", "absorption"))

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def busy(run_dir: str) -> str:
        noise = [draw_noise.submit(20.0) for _ in range(3)]
        random.seed(12345)  # a different global state than the plain call saw
        torch.manual_seed(12345)
        result = absorption.submit(run_dir).result()
        assert all(f.result() > 0 for f in noise)
        return result

    in_flow = busy(str(make_run(tmp_path / "flow", specs)))
    assert _absorption_values(in_flow) == _absorption_values(plain)
