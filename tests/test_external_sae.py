"""An SAE trained and saved by SAELens itself, scored here: ``fc-sae eval --sae-path`` on a real tiny
run (harvested cache, the real absorption and core evals), its rows in the run's results table marked
``external``, its dashboard, and one error line (nothing written) for a folder of another model or
hook and for an incomplete folder."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from fc_base.sae_folder import SAEMeta

ARCHITECTURES = ("topk", "standard", "jumprelu")
D_SAE = 128


def _train_saelens(store, kind: str, model_name: str, hook_name: str, out):
    """A tiny SAE trained by SAELens's own trainer on the cache, saved by SAELens (as a user of
    SAELens would: the runner fills the metadata from its model and hook)."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    common = dict(d_in=store.d_model, d_sae=D_SAE, device="cpu")
    sae = {"topk": lambda: TopKTrainingSAE(TopKTrainingSAEConfig(k=8, **common)),
           # b_dec not subtracted from the input: the import must fold it into the encoder bias
           "standard": lambda: StandardTrainingSAE(StandardTrainingSAEConfig(apply_b_dec_to_input=False, **common)),
           "jumprelu": lambda: JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common))}[kind]()
    sae.cfg.metadata.model_name = model_name
    sae.cfg.metadata.hook_name = hook_name

    def batches():
        epoch = 0
        while True:
            yield from (b.float() for b in store.iter_batches(256, seed=0, epoch=epoch))
            epoch += 1

    trainer_cfg = SAETrainerConfig(total_training_samples=256 * 40, train_batch_size_samples=256, lr=3e-3,
                                   lr_end=0.0, lr_warm_up_steps=0, lr_decay_steps=0, adam_beta1=0.9, adam_beta2=0.999,
                                   device="cpu", n_batches_for_norm_estimate=1, dead_feature_window=1000,
                                   logger=LoggingConfig(log_to_wandb=False))
    SAETrainer(trainer_cfg, sae, batches()).fit().save_inference_model(str(out))
    return out


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    from cache_tools import open_store
    from pipeline.config import resolve_config
    from pipeline.harvest import harvest
    from pipeline.rundir import prepare_run_dir

    root = tmp_path_factory.mktemp("external")
    run_dir = root / "run"
    cfg = prepare_run_dir(run_dir, resolve_config("tiny", None, ["harvest.n_tokens=4096"]))
    harvest(cfg, run_dir, progress=False)
    store = open_store(run_dir / "cache")
    saes = {kind: _train_saelens(store, kind, cfg.model.name, cfg.model.hook, root / "saelens" / kind)  # imported as external_<kind>
            for kind in ARCHITECTURES}
    return cfg, run_dir, store, saes


@pytest.fixture(scope="module")
def evaluated(run):
    """``fc-sae eval --sae-path`` on the SAELens TopK SAE, every eval of the tiny preset."""
    _, run_dir, _, saes = run
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "eval", "--run-dir", str(run_dir),
                           "--sae-path", str(saes["topk"])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return pd.read_parquet(run_dir / "results.parquet")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True)


def test_the_saelens_sae_is_scored_by_every_eval_into_the_results_table_as_external(run, evaluated):
    cfg, run_dir, _, _ = run
    rows = evaluated[evaluated["sae"] == "external_topk"]
    assert set(rows["eval"]) == set(cfg.eval.evals) == {"absorption", "core"}
    assert set(rows["trainer"]) == {"external"}
    assert (rows["model"] == cfg.model.name).all() and (rows["hook"] == cfg.model.hook).all()
    assert (rows["d_sae"] == D_SAE).all() and (rows["k"] == 8).all()
    assert not rows[rows["metric"] == ""].size, rows[rows["metric"] == ""][["eval", "status", "error"]]
    value = rows.set_index(["eval", "metric"])["value"]
    assert value["core", "l0"] == pytest.approx(8.0, abs=1e-6)  # SAELens's k, read through the import
    assert 0.5 < value["core", "explained_variance"] <= 1.0
    assert 0.0 <= value["absorption", "mean_absorption_fraction_score"] <= 1.0
    meta = SAEMeta.read(run_dir / "saes" / "external_topk")
    assert meta.external["format"] == "sae_lens" and meta.external["saelens_architecture"] == "topk"


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_the_imported_folder_encodes_as_saelens_does(run, kind):
    """What every eval loads (eval.sae.load_sae of the imported folder) reconstructs real cache rows as
    SAELens's own SAE does, and fires the same latents; the folder still loads in SAELens."""
    from sae_lens import SAE

    from eval.sae import load_sae
    from pipeline.external_sae import import_external_sae

    cfg, run_dir, store, saes = run
    name = import_external_sae(run_dir, saes[kind], cfg, f"check_{kind}")
    ours = load_sae(run_dir / "saes" / name)
    theirs = SAE.load_from_disk(str(saes[kind]), device="cpu")
    reloaded = SAE.load_from_disk(str(run_dir / "saes" / name), device="cpu")
    x_ND = torch.from_numpy(store.read_rows(store.n_rows - 1024, store.n_rows))  # not the rows the import checked
    want_ND = theirs.decode(theirs.encode(x_ND)).detach()
    torch.testing.assert_close(ours.decode(ours.encode(x_ND)), want_ND, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(reloaded.decode(reloaded.encode(x_ND)).detach(), want_ND, rtol=1e-4, atol=1e-4)
    assert torch.equal(ours.encode(x_ND) > 0, theirs.encode(x_ND) > 0)
    assert 0 < (theirs.encode(x_ND) > 0).float().sum(1).mean() < D_SAE  # a sparse SAE, so the check means something
    # importing the same folder again rewrites nothing (finished evals stay current)
    before = (run_dir / "saes" / name / "sae_meta.json").stat().st_mtime_ns
    assert import_external_sae(run_dir, saes[kind], cfg, f"check_{kind}") == name
    assert (run_dir / "saes" / name / "sae_meta.json").stat().st_mtime_ns == before


def test_the_dashboard_works_on_the_external_sae(run, evaluated, tmp_path):
    _, run_dir, _, _ = run
    proc = _cli("dashboard", "--run-dir", run_dir, "--sae", "external_topk", "--top", "3", "--contexts", "4",
                "--out", tmp_path / "dash")
    assert proc.returncode == 0, proc.stderr[-2000:]
    html = (tmp_path / "dash" / "index.html").read_text()
    assert html.count("<section") == 3 and html.count('class="fire"') == 3 * 4
    assert "external, seed 0, topk (k=8)" in html


def _snapshot(run_dir):
    return sorted(str(p.relative_to(run_dir)) + str(p.stat().st_mtime_ns)
                  for p in run_dir.rglob("*") if "cache" not in p.parts)


@pytest.mark.parametrize("field,value,named", [
    ("model_name", "EleutherAI/pythia-70m", "trained on EleutherAI/pythia-70m blocks.1.hook_resid_post"),
    ("hook_name", "blocks.0.hook_resid_post", "trained on EleutherAI/pythia-14m blocks.0.hook_resid_post"),
])
def test_another_model_or_hook_is_one_error_line_and_nothing_written(run, evaluated, tmp_path, field, value, named):
    _, run_dir, _, saes = run
    other = tmp_path / "other"
    shutil.copytree(saes["topk"], other)
    cfg_json = json.loads((other / "cfg.json").read_text())
    cfg_json["metadata"][field] = value
    (other / "cfg.json").write_text(json.dumps(cfg_json))
    before = _snapshot(run_dir)
    proc = _cli("eval", "--run-dir", run_dir, "--sae-path", other, "--eval", "core")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fc-sae: error: ") and named in lines[0], proc.stderr
    assert "but this run holds EleutherAI/pythia-14m blocks.1.hook_resid_post" in lines[0]
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize("missing", ["cfg.json", "sae_weights.safetensors"])
def test_an_incomplete_folder_is_one_error_line_and_nothing_written(run, tmp_path, missing):
    _, run_dir, _, saes = run
    broken = tmp_path / "broken"
    shutil.copytree(saes["topk"], broken)
    (broken / missing).unlink()
    before = _snapshot(run_dir)
    proc = _cli("eval", "--run-dir", run_dir, "--sae-path", broken)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"fc-sae: error: {broken} is not a complete SAELens SAE folder: {missing} is missing"
    assert _snapshot(run_dir) == before
