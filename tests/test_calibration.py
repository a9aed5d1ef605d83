"""The BatchTopK family's calibrated inference threshold, on the tiny model's real harvested cache:
training exports a threshold with mean L0 = k, the running estimate alone misses it, ``fc-sae
calibrate`` re-calibrates folders in place (atomic, idempotent), and bad input changes nothing."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from pipeline.cli import main
from tests.trainers_fixtures import synthetic_acts, write_store

FAMILY = ["batchtopk", "matryoshka"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_cfg, tiny_model_dir):
    from pipeline.harvest import harvest
    from pipeline.train import train

    run_dir = tmp_path_factory.mktemp("calibration-run")
    cfg = tiny_cfg.from_dict(tiny_cfg.to_dict())
    cfg.train.trainers = [*FAMILY, "topk"]
    harvest(cfg, run_dir, progress=False)
    train(cfg, run_dir, progress=False)
    return cfg, run_dir


def _record(run_dir, name):
    return json.loads((run_dir / "saes" / name / "sae_meta.json").read_text())["threshold_calibration"]


def _folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("trainer", FAMILY)
def test_exported_threshold_gives_mean_l0_k_and_the_running_estimate_does_not(tiny_run, trainer):
    cfg, run_dir = tiny_run
    k = cfg.train.k
    rec = _record(run_dir, f"{trainer}_s0")
    assert rec["target_l0"] == k and rec["rows"] == rec["check_rows"] > 0
    (c0, c1), (h0, h1) = rec["row_ranges"]
    assert c1 <= h0, "the check slice is disjoint from the calibration slice"
    assert rec["l0_calibration"] == pytest.approx(k, abs=1e-9)
    assert abs(rec["l0_check"] / k - 1) < 0.03
    assert abs(rec["l0_check_old"] / k - 1) > 0.03, "the uncalibrated running threshold should miss k here"
    log = pd.read_json(run_dir / "saes" / f"{trainer}_s0" / "train_log.jsonl", lines=True)
    assert (log["threshold"] > 0).all() and log["threshold"].iloc[-1] == pytest.approx(rec["old_threshold"])


def test_core_eval_l0_lands_within_3_percent_of_k(tiny_run):
    from eval.results import load
    from pipeline.evaluate import evaluate

    cfg, run_dir = tiny_run
    evaluate(cfg, run_dir, evals=["core"], saes=[f"{t}_s0" for t in FAMILY])
    rows = load(run_dir)
    l0 = rows[rows["metric"] == "l0"].set_index("sae")["value"]
    for trainer in FAMILY:
        assert abs(l0[f"{trainer}_s0"] / cfg.train.k - 1) < 0.03, l0


def test_calibrate_recalibrates_in_place_and_is_idempotent(tiny_run, tmp_path, capsys):
    _, run_dir = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir / "saes", copy / "saes")
    (copy / "cache").symlink_to(run_dir / "cache", target_is_directory=True)
    folder = copy / "saes" / "batchtopk_s0"
    trained = _record(run_dir, "batchtopk_s0")
    # A stale threshold, as SAEs trained before calibration existed carry.
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "sae_weights.safetensors"))
    weights["threshold"].fill_(trained["old_threshold"])
    save_file(weights, str(folder / "sae_weights.safetensors"))
    meta = json.loads((folder / "sae_meta.json").read_text())
    meta.pop("threshold_calibration")
    (folder / "sae_meta.json").write_text(json.dumps(meta))

    assert main(["calibrate", "--run-dir", str(copy), "--sae", "batchtopk_s0"]) == 0
    assert "batchtopk_s0: threshold" in capsys.readouterr().out
    rec = json.loads((folder / "sae_meta.json").read_text())["threshold_calibration"]
    assert rec == trained, "re-calibrating gives what training exported"
    assert float(load_file(str(folder / "sae_weights.safetensors"))["threshold"][0]) == pytest.approx(rec["threshold"])
    once = _folder_bytes(folder)
    assert main(["calibrate", "--run-dir", str(copy)]) == 0  # every family SAE of the run
    assert _folder_bytes(folder) == once
    assert _record(copy, "matryoshka_s0") == _record(run_dir, "matryoshka_s0")


def _one_error_line(capsys, match):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fc-sae: error:") and match in err[0], err


def test_bad_input_is_one_line_and_changes_nothing(tiny_run, tmp_path, capsys):
    _, run_dir = tiny_run
    before = {name: _folder_bytes(run_dir / "saes" / name) for name in ("topk_s0", "batchtopk_s0")}
    assert main(["calibrate", "--run-dir", str(run_dir), "--sae", "topk_s0"]) == 1
    _one_error_line(capsys, "no learned threshold")
    assert main(["calibrate", "--run-dir", str(run_dir), "--sae", "nope_s0"]) == 1
    _one_error_line(capsys, "no finished SAE 'nope_s0'")
    other = tmp_path / "other"
    shutil.copytree(run_dir / "saes" / "batchtopk_s0", other / "saes" / "batchtopk_s0")
    write_store(other / "cache", synthetic_acts(4096, 64))  # another model's activations, same width
    folder_before = _folder_bytes(other / "saes" / "batchtopk_s0")
    assert main(["calibrate", "--run-dir", str(other)]) == 1
    _one_error_line(capsys, "refusing to calibrate on it")
    assert _folder_bytes(other / "saes" / "batchtopk_s0") == folder_before
    assert {name: _folder_bytes(run_dir / "saes" / name) for name in before} == before
