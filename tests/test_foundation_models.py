"""The model registration path, exercised on the tiny random model (no Hub, no network)."""
import json
import os
import subprocess
import sys
import time

import torch

from pipeline import models
from tests.conftest import TINY


def _layer_output(model, layer, ids):
    captured = {}

    def hook(_module, _inp, out):
        captured["x"] = out[0] if isinstance(out, tuple) else out

    handle = models.decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    return captured["x"]


def test_tiny_model_loads_by_name_offline_in_transformers_and_transformer_lens(tiny_model_dir):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert str(tiny_model_dir).startswith(os.environ["FC_SAE_HOME"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # By name, exactly as sae-bench / TransformerLens will ask for it.
    hf = AutoModelForCausalLM.from_pretrained(TINY).eval()
    tok = AutoTokenizer.from_pretrained(TINY)
    tl = models.load_hooked_model(TINY, source="tiny-random")
    assert tl.cfg.d_model == hf.config.hidden_size == 64
    ids = tok(" kelo aabaca bik cab duvut", return_tensors="pt").input_ids
    ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], dim=1)
    _, cache = tl.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
    for layer in range(tl.cfg.n_layers):
        diff = (_layer_output(hf, layer, ids) - cache[f"blocks.{layer}.hook_resid_post"]).abs().max().item()
        print(f"layer {layer}: max |HF - TransformerLens| = {diff:.3e}")
        assert diff < 1e-4


def test_provenance_says_the_tiny_model_is_random(tiny_model_dir):
    prov = models.model_provenance(TINY)
    assert prov["source"] == "tiny-random" and "RANDOM" in prov["note"]
    assert json.loads((tiny_model_dir / models.PROVENANCE_FILE).read_text()) == prov
    # Registration is idempotent: asking again returns the same snapshot without rebuilding.
    assert models.ensure_model(TINY, source="tiny-random") == tiny_model_dir


def test_random_model_never_passes_for_the_real_one(tiny_model_dir):
    try:
        models.ensure_model(TINY, source="auto")
    except models.ModelUnavailableError as e:
        assert "random test model" in str(e)
    else:
        raise AssertionError("a tiny-random snapshot was served as the real model")


def _cli(*args, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_unknown_model_fails_fast_with_one_line():
    t0 = time.time()
    r = _cli("model", "nobody/no-such-model")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not available offline" in lines[0], r.stderr
    assert time.time() - t0 < 60


def test_hub_model_with_hub_allowed_but_unreachable_fails_fast(monkeypatch):
    monkeypatch.setenv("FC_SAE_ONLINE", "1")
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    try:
        models.ensure_model("EleutherAI/pythia-70m-deduped")
    except models.ModelUnavailableError as e:
        assert "unreachable" in str(e)
    else:
        raise AssertionError("expected ModelUnavailableError")


def test_pythia70m_preset_fails_fast_offline():
    r = _cli("harvest", "--preset", "pythia70m", "--run-dir", os.path.join(os.environ["FC_SAE_HOME"], "p70"))
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1
    assert "pythia-70m-deduped" in r.stderr or "pile-uncopyrighted" in r.stderr
