"""Harvest on the tiny random model: correctness against TransformerLens, idempotence, SIGKILL
resume, Dask equality, repair, and loud failures."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cache_tools import open_store
from cache_tools.cli import main as fc_cache
from cache_tools.layout import ACTS, ARRAYS, MANIFEST_NAME, shard_path
from cache_tools.manifest import Manifest
from cache_tools.verify import verify_store
from pipeline.config import apply_overrides, get_preset
from pipeline.harvest import GroupHarvester, HarvestError, harvest

# 12 shards of 1024 rows (the last one 736), shuffled in groups of 2 shards: 6 groups
OVERRIDES = ["harvest.n_tokens=12000", "harvest.shard_rows=1024", "harvest.chunk_rows=256",
             "harvest.shuffle_buffer_shards=2", "harvest.batch_size=16"]
N_SHARDS = 12


def small_cfg(*extra: str):
    return apply_overrides(get_preset("tiny"), OVERRIDES + list(extra))


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> Path:
    """An uninterrupted single-process harvest; every other store must equal it byte for byte."""
    run_dir = tmp_path_factory.mktemp("reference")
    return harvest(small_cfg(), run_dir, progress=False)


def assert_same_store(store: Path, reference: Path) -> None:
    assert sorted(Manifest(store / MANIFEST_NAME).load()) == list(range(N_SHARDS))
    for shard in range(N_SHARDS):
        for array in ARRAYS:
            got = shard_path(store, array, shard).read_bytes()
            assert got == shard_path(reference, array, shard).read_bytes(), f"shard {shard} {array} differs"
    assert verify_store(store).ok


def test_store_is_complete_with_provenance(reference):
    store = open_store(reference)
    assert (store.n_rows, store.d_model, store.acts_dtype) == (12000, 64, "float32")
    attrs = store.attrs
    assert attrs["model"]["name"] == "EleutherAI/pythia-14m"
    assert attrs["model"]["provenance"]["source"] == "tiny-random"
    assert attrs["layer"] == 1 and attrs["hook_name"] == "blocks.1.hook_resid_post"
    assert attrs["context_length"] == 32 and attrs["rows_per_window"] == 31 and attrs["bos_excluded"]
    assert attrs["dataset"]["source"] == "tiny-synthetic" and attrs["seed"] == 0
    assert attrs["harvest_config"]["shard_rows"] == 1024 and attrs["project_version"]
    assert fc_cache(["verify", str(reference)]) == 0


def test_rows_equal_transformerlens_resid_post(reference):
    """Each stored row is blocks.1.hook_resid_post of its token, found through (doc id, position)."""
    from pipeline.corpus import iter_windows
    from pipeline.models import load_hooked_model, load_tokenizer

    cfg = small_cfg()
    store = open_store(reference)
    tokens = store.read_tokens(0, store.n_rows)
    row_of = {(int(d), int(p)): i for i, (d, p) in enumerate(zip(tokens.doc_ids_R, tokens.positions_R))}
    tokenizer = load_tokenizer(cfg.model.name, source=cfg.model.source)
    windows = [w for _, w in zip(range(6), iter_windows(cfg.corpus, tokenizer))]
    model = load_hooked_model(cfg.model.name, source=cfg.model.source)
    _, cache = model.run_with_cache(torch.tensor([w[0] for w in windows]), names_filter=cfg.model.hook)
    expected_WTD = cache[cfg.model.hook].numpy()
    acts = store.read_rows(0, store.n_rows)
    for w, (toks, docs, poss) in enumerate(windows):
        assert docs[0] == -1  # BOS, not stored
        rows = [row_of[(d, p)] for d, p in zip(docs[1:], poss[1:])]
        np.testing.assert_array_equal(tokens.token_ids_R[rows], toks[1:])
        np.testing.assert_allclose(acts[rows], expected_WTD[w, 1:], atol=1e-5)


def test_rows_are_unique_bos_free_and_shuffled_across_documents(reference):
    store = open_store(reference)
    t = store.read_tokens(0, store.n_rows)
    assert (t.doc_ids_R >= 0).all() and (t.positions_R >= 0).all()
    pairs = t.doc_ids_R.astype(np.int64) * 1_000_000 + t.positions_R
    assert len(np.unique(pairs)) == store.n_rows
    assert np.mean(np.diff(t.doc_ids_R[:1024]) == 0) < 0.1  # neighbours come from different documents


def test_finished_harvest_is_detected_and_not_redone(reference):
    manifest = reference / MANIFEST_NAME
    before = (manifest.stat().st_mtime_ns, manifest.read_bytes())
    assert harvest(small_cfg(), reference.parent, progress=False) == reference
    assert (manifest.stat().st_mtime_ns, manifest.read_bytes()) == before


def test_another_config_in_the_same_run_dir_is_refused(reference):
    with pytest.raises(HarvestError, match="different model/corpus/harvest"):
        harvest(small_cfg("model.layer=0"), reference.parent, progress=False)


def test_sigkill_mid_harvest_then_resume_gives_an_identical_store(reference, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipeline.cli", "harvest", "--preset", "tiny", "--run-dir", str(run_dir)]
    for item in OVERRIDES:
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    manifest = run_dir / "cache" / MANIFEST_NAME
    deadline = time.monotonic() + 120
    while not (manifest.exists() and manifest.read_bytes().count(b"\n") >= 1):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "harvest never committed a shard"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = len(Manifest(manifest).load())
    assert 1 <= committed < N_SHARDS, "the kill must land mid-harvest"
    assert harvest(small_cfg(), run_dir, progress=False) == run_dir / "cache"
    assert_same_store(run_dir / "cache", reference)


def test_dask_workers_write_the_same_store(reference, tmp_path):
    path = harvest(small_cfg("harvest.n_workers=2"), tmp_path, progress=False)
    assert_same_store(path, reference)


def test_repair_then_harvest_restores_a_damaged_store(reference, tmp_path, capsys):
    shutil.copytree(reference, tmp_path / "cache")
    store = tmp_path / "cache"
    for shard, array in [(3, ACTS), (8, "doc_ids")]:
        path = shard_path(store, array, shard)
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0x01
        path.write_bytes(bytes(data))
    assert fc_cache(["verify", str(store)]) == 1
    err = capsys.readouterr().err
    assert "DAMAGED shard 3 (acts)" in err and "DAMAGED shard 8 (doc_ids)" in err
    assert fc_cache(["repair", str(store)]) == 0
    assert harvest(small_cfg(), tmp_path, progress=False) == store
    assert_same_store(store, reference)


def test_nan_activations_fail_loudly_and_keep_committed_shards(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir / "cache")
    manifest = Manifest(run_dir / "cache" / MANIFEST_NAME)
    manifest.rewrite({s: r for s, r in manifest.load().items() if s < 4})  # groups 2.. still to do
    for s in range(4, N_SHARDS):
        for array in ARRAYS:
            shard_path(run_dir / "cache", array, s).unlink()
    with GroupHarvester(small_cfg(), run_dir / "cache") as worker:
        with torch.no_grad():
            worker.forward.model.gpt_neox.layers[0].input_layernorm.weight[0] = float("nan")
        with pytest.raises(HarvestError, match=r"NaN/inf activations in the harvest batch of windows \d+\.\.\d+"):
            worker.run([2], progress=False)
    assert sorted(manifest.load()) == [0, 1, 2, 3]
    assert verify_store(run_dir / "cache").ok


def test_corpus_too_small_is_one_clear_error_and_keeps_finished_shards(tiny_model_dir, tmp_path, capsys):
    from pipeline.cli import main as fc_sae
    from pipeline.synthetic_text import documents

    text = tmp_path / "small.txt"
    text.write_text("\n\n".join(documents(60, seed=5)))
    args = ["harvest", "--preset", "tiny", "--run-dir", str(tmp_path / "run"),
            "--set", f"corpus.source={text}"] + [a for item in OVERRIDES for a in ("--set", item)]
    assert fc_sae(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "ran out after" in err[-1] and err[-1].startswith("fc-sae: error:")
    store = tmp_path / "run" / "cache"
    report = verify_store(store)
    assert report.ok and 0 < len(report.committed) < N_SHARDS


def test_truncated_forward_never_runs_the_layers_above(tiny_model_dir):
    from pipeline.models import decoder_layers, load_model
    from pipeline.truncated_forward import TruncatedForward

    model = load_model("EleutherAI/pythia-14m", source="tiny-random")
    calls = []
    handle = decoder_layers(model)[1].register_forward_hook(lambda *a: calls.append(1))
    ids = torch.randint(0, 100, (2, 8))
    with TruncatedForward(model, 0) as forward:
        out = forward(ids)
    handle.remove()
    assert calls == [] and out.shape == (2, 8, 64)
    full = model(ids, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(out, full)
    with pytest.raises(ValueError, match="out of range"):
        TruncatedForward(model, 2)


def test_float16_overflow_is_refused_naming_the_store_dtype(tiny_model_dir, tmp_path):
    from pipeline.harvest import prepare_harvest

    cfg = small_cfg("harvest.store_dtype=float16")
    prep = prepare_harvest(cfg, tmp_path)
    with GroupHarvester(cfg, prep.root, tokenizer=prep.tokenizer) as worker:
        with torch.no_grad():  # residual norms far beyond float16's 65504
            worker.forward.model.gpt_neox.embed_in.weight.mul_(1e6)
        with pytest.raises(HarvestError, match="overflow harvest.store_dtype=float16"):
            worker.run([0], progress=False)
    assert prep.writer.committed() == {}


def test_a_second_concurrent_harvest_is_refused(tmp_path):
    import fcntl

    with open(tmp_path / ".harvest.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(HarvestError, match="another harvest is already writing"):
            harvest(small_cfg(), tmp_path, progress=False)
