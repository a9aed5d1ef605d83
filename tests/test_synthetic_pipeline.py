"""The synthetic model source through the real stages: harvest into the activation store, train,
the synthetic eval, the report; and its bad inputs (seconds: the 128-feature model)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

CUSTOM = {  # a custom synthetic model defined by a config file
    "num_features": 64, "hidden_dim": 16,
    "firing_probability": {"generator_name": "zipfian", "exponent": 0.5, "max_prob": 0.3, "min_prob": 0.01},
    "hierarchy": {"total_root_nodes": 2, "branching_factor": 3, "max_depth": 2, "mutually_exclusive_portion": 1.0},
    "orthogonalization": {"num_steps": 5, "lr": 3e-4}, "correlation": {"rank": 4, "correlation_scale": 0.1},
    "mean_firing_magnitudes": {"generator_name": "linear", "start": 2.0, "end": 1.0},
    "std_firing_magnitudes": 0.1, "bias": 0.5, "seed": 7,
}


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    """The synth-tiny preset through every stage (run once for the module)."""
    from pipeline.config import get_preset
    from pipeline.stages import run_all

    run_dir = tmp_path_factory.mktemp("synth") / "run"
    cfg = get_preset("synth-tiny")
    run_all(cfg, run_dir)
    return cfg, run_dir


def test_store_is_a_verified_activation_cache_with_synthetic_provenance(synth_run):
    from cache_tools import open_store
    from cache_tools.verify import verify_store

    cfg, run_dir = synth_run
    store = open_store(run_dir / "cache")
    assert (store.n_rows, store.d_model) == (16384, 32)
    assert verify_store(run_dir / "cache").ok
    model = store.attrs["model"]
    assert model["name"] == "synth/tiny" and model["source"] == "synthetic"
    assert model["provenance"]["synthetic"] is True and model["provenance"]["sae_lens_version"]
    assert len(model["synthetic_config_hash"]) == 16


def test_harvest_is_a_pure_function_of_the_config(synth_run, tmp_path):
    from pipeline.harvest import harvest

    cfg, run_dir = synth_run
    again = harvest(cfg, tmp_path / "again", progress=False)
    shards = [p for p in sorted((run_dir / "cache" / "acts").rglob("*")) if p.is_file() and p.name != "zarr.json"]
    assert len(shards) == 4  # 16384 rows in shards of 4096
    for shard in shards:
        assert (again / shard.relative_to(run_dir / "cache")).read_bytes() == shard.read_bytes(), shard


def test_synthetic_eval_rows_for_every_sae(synth_run):
    from eval.results import load

    cfg, run_dir = synth_run
    table = load(run_dir)
    assert set(table["eval"]) == {"synthetic"} and (table["status"] == "ok").all()
    for sae in ("topk_s0", "fc_topk_s0"):
        rows = table[table["sae"] == sae].set_index("metric")["value"]
        for metric in ("f1", "mcc", "explained_variance", "l0", "dead_latents", "shrinkage", "uniqueness",
                       "absorption_rate", "fully_absorbed_fraction", "decoder_absorption", "n_parents_scored",
                       "n_pairs_scored", "absorption_rate/depth0", "detect_auc_absorption_score",
                       "detect_auc_frequency", "detect_auc_inconsistency"):
            assert metric in rows.index, (sae, metric)
        assert 0.0 <= rows["f1"] <= 1.0 and 0.0 <= rows["mcc"] <= 1.0 and rows["explained_variance"] > 0.0
        assert 0.0 <= rows["absorption_rate"] <= 1.0 and rows["n_parents_scored"] > 0
        assert rows["l0"] == pytest.approx(4.0)


def test_report_has_the_ground_truth_section_and_depth_plot(synth_run):
    cfg, run_dir = synth_run
    page = (run_dir / "report" / "index.html").read_text()
    assert 'id="synthetic"' in page and "absorption_rate ↓" in page and "f1 ↑" in page
    assert (run_dir / "report" / "synthetic_absorption_by_depth.png").stat().st_size > 1000


def test_language_evals_skip_synthetic_saes(synth_run):
    from pipeline.evaluate import run_eval_task

    cfg, run_dir = synth_run
    rows = json.loads(run_eval_task(cfg, run_dir, "topk_s0", "absorption").read_text())["rows"]
    assert rows[0]["status"] == "skipped" and "needs a language model" in rows[0]["error"]
    (run_dir / "eval" / "topk_s0" / "absorption.json").unlink()


def test_unknown_synthetic_name_is_one_error_line():
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "show", "--preset", "synth-tiny",
                           "--set", "model.name=synth/nope"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "unknown synthetic model 'synth/nope'" in proc.stderr


def test_invalid_config_field_is_one_error_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**CUSTOM, "nope": 1}))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "show", "--preset", "synth-tiny",
                           "--set", "model.name=synth/custom", "--set", f"model.synthetic_config={bad}"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "nope" in proc.stderr


def test_store_from_another_synthetic_config_is_refused_and_nothing_is_lost(tmp_path):
    from fc_base.errors import ConfigError
    from pipeline.config import apply_overrides, get_preset
    from pipeline.evaluate import run_eval_task
    from pipeline.harvest import harvest
    from pipeline.train import train

    path = tmp_path / "custom.json"
    path.write_text(json.dumps(CUSTOM))
    cfg = apply_overrides(get_preset("synth-tiny"), ["model.name=synth/custom", f"model.synthetic_config={path}",
                                                     'train.trainers=["topk"]', "train.d_sae=32"])
    run_dir = tmp_path / "run"
    harvest(cfg, run_dir, progress=False)
    train(cfg, run_dir, progress=False)
    run_eval_task(cfg, run_dir, "topk_s0", "synthetic")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    path.write_text(json.dumps({**CUSTOM, "seed": 8}))  # the file now defines another model
    with pytest.raises(ConfigError, match="harvested from synthetic config .* but the eval asks for"):
        run_eval_task(apply_overrides(cfg, []), run_dir, "topk_s0", "synthetic")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
