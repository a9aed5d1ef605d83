"""``fc-sae dashboard`` on a real tiny run (harvested cache, trained TopK SAE): the one-pass top-N
equals a brute-force encode of the whole cache, the contexts are the corpus's own tokens around the
cache's row, and bad input is one error line, a non-zero exit and nothing written."""
from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.dashboard.build import build_dashboard
from pipeline.dashboard.contexts import build_contexts
from pipeline.dashboard.options import DashboardOptions
from pipeline.dashboard.scan import scan_top_activations

SAE = "topk_s0"
N_TOP = 8


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    from pipeline.config import resolve_config
    from pipeline.harvest import harvest
    from pipeline.train import train

    cfg = resolve_config("tiny", None, ["harvest.n_tokens=4096", "train.n_tokens=8192"])
    run_dir = tmp_path_factory.mktemp("dashboard") / "run"
    harvest(cfg, run_dir, progress=False)
    train(cfg, run_dir, trainer="topk", progress=False)
    return cfg, run_dir


@pytest.fixture(scope="module")
def loaded(run):
    from cache_tools import open_store
    from eval.sae import load_sae
    from pipeline.models import load_tokenizer

    cfg, run_dir = run
    return open_store(run_dir / "cache"), load_sae(run_dir / "saes" / SAE), load_tokenizer(cfg.model.name, source=cfg.model.source)


def _firing_latents(store, sae, n=4):
    codes_RS = sae.encode(torch.from_numpy(store.read_rows(0, store.n_rows)))
    fires_S = (codes_RS > 0).sum(0)
    return codes_RS, fires_S.argsort(descending=True)[:n].tolist()


def test_one_pass_top_n_is_the_brute_force_top_n(loaded):
    store, sae, _ = loaded
    codes_RS, latents = _firing_latents(store, sae)
    top = scan_top_activations(store, sae, latents, N_TOP, batch_size=1000)  # batches cross shard edges
    want_vals_NM, want_rows_NM = codes_RS[:, latents].topk(N_TOP, dim=0)
    torch.testing.assert_close(top.top_vals_NM, want_vals_NM, rtol=1e-5, atol=1e-5)
    for m in range(len(latents)):  # rows agree up to ties
        assert set(top.top_rows_NM[:, m].tolist()) == set(want_rows_NM[:, m].tolist()) or \
            torch.unique(want_vals_NM[:, m]).numel() < N_TOP
    assert top.hist_MB.sum(1).tolist() == (codes_RS[:, latents] > 0).sum(0).tolist()


def test_contexts_are_the_corpus_tokens_around_the_cache_row(run, loaded):
    from pipeline.corpus import iter_documents

    cfg, _ = run
    store, sae, tokenizer = loaded
    _, latents = _firing_latents(store, sae, n=2)
    top = scan_top_activations(store, sae, latents, N_TOP, batch_size=4096)
    contexts = build_contexts(store, sae, top, tokenizer, width=12)
    needed = max(c.doc_id for per in contexts for c in per)
    docs = list(itertools.islice(iter_documents(cfg.corpus), needed + 1))
    for m, per_latent in enumerate(contexts):
        assert len(per_latent) == N_TOP
        for ctx in per_latent:
            fired = ctx.tokens[ctx.centre]
            assert fired.token_id == int(store.read_tokens(ctx.row, ctx.row + 1).token_ids_R[0])
            assert fired.text == tokenizer.decode([fired.token_id]) and fired.text.strip()
            assert fired.activation == pytest.approx(ctx.activation, rel=1e-5)
            # the document re-tokenised from the corpus has these very tokens at these positions
            doc_ids = tokenizer(docs[ctx.doc_id], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            start = ctx.position - ctx.centre
            assert [t.token_id for t in ctx.tokens if t.in_cache] == \
                [doc_ids[start + i] for i, t in enumerate(ctx.tokens) if t.in_cache]
            assert 2 <= len(ctx.tokens) <= 25


def test_page_shows_each_latent_with_its_contexts(run, loaded, tmp_path):
    _, run_dir = run
    store, sae, tokenizer = loaded
    _, latents = _firing_latents(store, sae, n=2)
    out = tmp_path / "dash"
    page = build_dashboard(run_dir, DashboardOptions(sae=SAE, latents=tuple(latents), out=out, n_contexts=5))
    html = page.read_text()
    for i in latents:
        assert f'id="latent-{i}"' in html and (out / f"latent_{i}.png").stat().st_size > 1000
    assert html.count('class="fire"') == 5 * len(latents)
    assert "tracker history" not in html or (run_dir / "saes" / SAE / "fc_history.parquet").is_file()
    # --top ranks by the tracker's last snapshot
    top = build_dashboard(run_dir, DashboardOptions(sae=SAE, top=3, out=tmp_path / "top", n_contexts=2)).read_text()
    assert top.count("<section") == 3


def test_absorbing_picks_the_latents_the_eval_named_for_the_letter(run, tmp_path):
    _, run_dir = run
    task = run_dir / "eval" / SAE / "absorption.json"
    task.parent.mkdir(parents=True, exist_ok=True)
    details = {"letters": [{"letter": "b", "included": True, "absorption_fraction": 0.25}],
               "main_latents": [3], "absorbing_latents": [5, 7],
               "letter_latents": {"b": {"main": [3], "absorbing": [7]}, "c": {"main": [], "absorbing": [5]}}}
    task.write_text(json.dumps({"rows": [{"status": "ok"}], "details": details}))
    try:
        html = build_dashboard(run_dir, DashboardOptions(sae=SAE, absorbing="b", out=tmp_path / "b", n_contexts=2)).read_text()
    finally:
        shutil.rmtree(run_dir / "eval")
    assert 'id="latent-7"' in html and 'id="latent-3"' in html and 'id="latent-5"' not in html
    assert "absorbing latent of &#x27;b&#x27;" in html and "absorption fraction 0.250" in html


def test_bad_input_is_one_line_a_failed_exit_and_nothing_written(run, tmp_path):
    from tests.trainers_fixtures import synthetic_acts, write_store

    _, run_dir = run
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir / "saes" / SAE, unfinished / "saes" / SAE)
    (unfinished / "saes" / SAE / "sae_meta.json").unlink()
    (unfinished / "cache").symlink_to(run_dir / "cache")
    other = tmp_path / "other"
    shutil.copytree(run_dir / "saes" / SAE, other / "saes" / SAE)
    write_store(other / "cache", synthetic_acts(1024, 64))  # another model's activations, same width
    cases = {  # (run dir, extra args) -> what the error line names
        "unknown latent": (run_dir, ["--latents", "3,99999"], "latent 99999 is not a latent"),
        "unfinished SAE": (unfinished, [], "sae_meta.json is missing"),
        "another model's cache": (other, [], "but the activation cache holds"),
        "no absorption eval": (run_dir, ["--absorbing", "b"], "no finished absorption eval"),
    }
    procs = {}
    for name, (rd, extra, _) in cases.items():
        out = tmp_path / "out" / name.replace(" ", "_")
        cmd = [sys.executable, "-m", "pipeline.cli", "dashboard", "--run-dir", str(rd), "--sae", SAE, *extra]
        procs[name] = (subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True), out)
    for name, (proc, out) in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert proc.returncode != 0 and stdout == "", name
        assert len(lines) == 1 and lines[0].startswith("fc-sae: error:") and cases[name][2] in lines[0], (name, stderr)
        assert not out.exists() and not (cases[name][0] / "dashboards").exists(), name
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True
