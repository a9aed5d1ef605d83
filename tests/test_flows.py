"""The Prefect flow end to end on the tiny preset, against a real (temporary) Prefect server."""
import os

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
