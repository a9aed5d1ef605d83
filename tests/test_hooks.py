"""``model.hook``: each harvestable hook is read from the module TransformerLens records it at (tiny
GPT-NeoX through the whole harvest; tiny random Llama and Gemma-3 through the truncated forward), bad
hooks are one error line before anything is written, and the evals splice at the SAE's own hook."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, HOOK_KINDS, RunConfig, apply_overrides, get_preset

# 4 shards of 512 rows: 2 groups; windows of 32 tokens (31 rows each, BOS dropped)
OVERRIDES = ["harvest.n_tokens=2048", "harvest.shard_rows=512", "harvest.chunk_rows=256", "harvest.batch_size=16"]
N_WINDOWS_CHECKED = 8
REL_TOL = 1e-5
"""Largest |harvested - TransformerLens| allowed, relative to the largest |activation| (float32 sums
taken in another order differ by a few 1e-7 of the scale)."""


def hook_cfg(hook: str, *extra: str) -> RunConfig:
    layer = hook.split(".")[1]
    return apply_overrides(get_preset("tiny"), OVERRIDES + [f"model.layer={layer}", f"model.hook={hook}", *extra])


def max_rel_diff(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def hooked_tiny(tiny_model_dir):
    from pipeline.models import load_hooked_model

    cfg = get_preset("tiny")
    return load_hooked_model(cfg.model.name, source=cfg.model.source)


@pytest.mark.parametrize("hook", [f"blocks.{layer}.{kind}" for kind in HOOK_KINDS for layer in (0, 1)])
def test_harvested_rows_equal_transformerlens_at_the_hook(hook, hooked_tiny, tmp_path):
    """Every stored row is TransformerLens's ``hook`` activation of its token, found through
    (doc id, position), and the store says which hook and module it holds."""
    from cache_tools import open_store
    from pipeline.corpus import iter_windows
    from pipeline.harvest import harvest
    from pipeline.models import load_tokenizer

    cfg = hook_cfg(hook)
    store = open_store(harvest(cfg, tmp_path, progress=False))
    assert store.attrs["hook_name"] == hook and store.attrs["layer"] == cfg.model.layer
    module = {"hook_resid_post": "", "hook_mlp_out": ".mlp", "hook_attn_out": ".attention.dense"}[hook.split(".")[2]]
    assert store.attrs["hook_module"] == f"output of decoder layers[{cfg.model.layer}]{module}"
    tokens = store.read_tokens(0, store.n_rows)
    row_of = {(int(d), int(p)): i for i, (d, p) in enumerate(zip(tokens.doc_ids_R, tokens.positions_R))}
    windows = [w for _, w in zip(range(N_WINDOWS_CHECKED), iter_windows(cfg.corpus, load_tokenizer(cfg.model.name,
                                                                                                  source=cfg.model.source)))]
    _, cache = hooked_tiny.run_with_cache(torch.tensor([w[0] for w in windows]), names_filter=hook)
    expected_WTD = cache[hook].numpy()
    acts_RD = store.read_rows(0, store.n_rows)
    rows = [row_of[(d, p)] for _, docs, poss in windows for d, p in zip(docs[1:], poss[1:])]
    got_WTD = acts_RD[rows].reshape(len(windows), -1, store.d_model)
    assert max_rel_diff(got_WTD, expected_WTD[:, 1:]) < REL_TOL


def test_the_three_hooks_of_a_layer_are_different_activations(hooked_tiny):
    """Guards the comparison above: resid_post, mlp_out and attn_out differ by far more than the tolerance."""
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    _, cache = hooked_tiny.run_with_cache(ids)
    acts = [cache[f"blocks.1.{kind}"].numpy() for kind in HOOK_KINDS]
    for i in range(3):
        for j in range(i + 1, 3):
            assert max_rel_diff(acts[i], acts[j]) > 0.1


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def _tiny_gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                           layer_types=["sliding_attention", "full_attention"], sliding_window=512,
                           max_position_embeddings=256)
    return Gemma3ForCausalLM(cfg).eval()


def _transformerlens_twin(family: str, hf_model, tmp_path: Path):
    """A HookedTransformer with the random model's weights, its config built the way TransformerLens
    builds it for the real model of that family (Llama: from the HF config; Gemma-3: TransformerLens's
    own gemma-3-270m config resized to the tiny shape)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    if family == "llama":
        # A local folder: TransformerLens derives the config from its config.json (a path naming
        # "llama" would send it down its name-based branch instead).
        folder = Path(tempfile.mkdtemp(prefix="fc-sae-tl-", dir=tmp_path.parent)) / "tiny-lm"
        hf_model.save_pretrained(folder)
        cfg_dict = convert_hf_model_config(str(folder))
        convert = convert_llama_weights
    else:
        c = hf_model.config
        cfg_dict = convert_hf_model_config("google/gemma-3-270m")  # hard-coded by name, nothing fetched
        cfg_dict.update(d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads,
                        d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings,
                        d_vocab=c.vocab_size, n_key_value_heads=c.num_key_value_heads,
                        attn_types=["local" if t == "sliding_attention" else "global" for t in c.layer_types])
        convert = convert_gemma_weights
    cfg_dict.update(model_name=f"tiny-{family}", init_weights=False, tokenizer_name=None)
    cfg = HookedTransformerConfig(**cfg_dict)
    twin = HookedTransformer(cfg)
    missing, unexpected = twin.load_state_dict(convert(hf_model, cfg), strict=False)
    assert not unexpected and all(k.split(".")[-1] in ("mask", "IGNORE", "rotary_sin", "rotary_cos") for k in missing)
    return twin.eval()


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_llama_and_gemma3_hooks_equal_transformerlens(family, tmp_path):
    """SmolLM2's and Gemma-3's families, as tiny random models: every hook of every layer equals
    TransformerLens's. The norms get random weights so that reading Gemma-3's attention or MLP before
    its post-norm (or Llama's pre-MLP norm by mistake) could not pass."""
    from pipeline.truncated_forward import TruncatedForward

    torch.manual_seed(0)
    hf_model = _tiny_llama() if family == "llama" else _tiny_gemma3()
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            if "norm" in name:
                p.normal_(0.5, 0.5)
    twin = _transformerlens_twin(family, hf_model, tmp_path)
    ids_BT = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(1))
    _, cache = twin.run_with_cache(ids_BT)
    for layer in range(hf_model.config.num_hidden_layers):
        for kind in HOOK_KINDS:
            hook = f"blocks.{layer}.{kind}"
            with TruncatedForward(hf_model, layer, hook) as forward:
                acts_BTD = forward(ids_BT)
            assert max_rel_diff(acts_BTD.numpy(), cache[hook].numpy()) < REL_TOL, hook


@pytest.mark.parametrize("overrides, fragment, written", [
    (["model.hook=blocks.1.hook_resid_pre"], "model.hook must be blocks.<layer>.<kind> with kind one of "
                                             "hook_resid_post, hook_mlp_out, hook_attn_out, got 'blocks.1.hook_resid_pre'",
     None),
    (["model.hook=resid_post"], "model.hook must be blocks.<layer>.<kind>", None),
    (["model.hook=blocks.0.hook_mlp_out"], "model.hook 'blocks.0.hook_mlp_out' is at layer 0 but model.layer is 1",
     None),
    # The config is valid on its face; the CLI checks the model's layer count before it saves the run's
    # config.json (a saved bad config would clash with the corrected one).
    (["model.layer=2"], "EleutherAI/pythia-14m: hook 'blocks.2.hook_resid_post': layer 2 out of range: the model "
                        "(gpt_neox) has 2 decoder layers (0..1)", None),
    (["model.layer=7", "model.hook=blocks.7.hook_attn_out"], "layer 7 out of range", None),
])
def test_a_bad_hook_is_one_error_line_before_the_harvest_writes(overrides, fragment, written, tiny_model_dir,
                                                                tmp_path, capsys):
    from pipeline.cli import main as fc_sae

    run_dir = tmp_path / "run"
    args = ["harvest", "--preset", "tiny", "--run-dir", str(run_dir)]
    for item in OVERRIDES + overrides:
        args += ["--set", item]
    assert fc_sae(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fc-sae: error: ") and fragment in err[0], err
    assert (sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else None) == written


def test_the_harvest_stage_checks_the_hook_before_it_writes(tiny_model_dir, tmp_path):
    from pipeline.harvest import HarvestError, harvest, prepare_harvest

    cfg = hook_cfg("blocks.3.hook_mlp_out")
    with pytest.raises(HarvestError, match="layer 3 out of range"):
        harvest(cfg, tmp_path / "run", progress=False)
    with pytest.raises(HarvestError, match="layer 3 out of range"):
        prepare_harvest(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_family_without_known_modules_gets_resid_post_only():
    from transformers import GPT2Config

    from pipeline.truncated_forward import hook_site

    cfg = GPT2Config(n_layer=2)
    assert hook_site(cfg, "blocks.1.hook_resid_post").module == ""
    with pytest.raises(ValueError, match=r"hook_mlp_out is known for the model families gpt_neox, llama, "
                                         r"gemma3_text, not 'gpt2'; use blocks.1.hook_resid_post"):
        hook_site(cfg, "blocks.1.hook_mlp_out")


def test_setting_only_the_layer_moves_the_hook_and_keeps_its_kind(tmp_path):
    cfg = apply_overrides(get_preset("tiny"), ["model.hook=blocks.1.hook_mlp_out"])
    assert apply_overrides(cfg, ["model.layer=0"]).model.hook == "blocks.0.hook_mlp_out"
    assert apply_overrides(get_preset("tiny"), ["model.layer=0"]).model.hook == "blocks.0.hook_resid_post"
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "tiny", "model": {"layer": 0}}))
    assert RunConfig.load(path).model.hook == "blocks.0.hook_resid_post"
    path.write_text(json.dumps({"preset": "tiny", "model": {"layer": 0, "hook": "blocks.0.hook_attn_out"}}))
    assert RunConfig.load(path).model.hook == "blocks.0.hook_attn_out"
    with pytest.raises(ConfigError, match="synthetic model must be 'synthetic'"):
        apply_overrides(get_preset("synth-tiny"), ["model.hook=blocks.0.hook_resid_post"])


# ---- the evals read the SAE's hook ---------------------------------------------------------------

MLP_HOOK = "blocks.1.hook_mlp_out"


def _pca_sae(folder: Path, acts_ND: torch.Tensor, n_components: int, cfg: RunConfig) -> None:
    """A ReLU SAE that projects onto the top principal directions of ``acts_ND`` (latent pairs +u, -u
    around the mean): it reconstructs the activations it was fitted on well and others badly."""
    from safetensors.torch import save_file

    from fc_base.sae_folder import WEIGHTS_FILE, SAEMeta

    mean_D = acts_ND.mean(0)
    dirs_CD = torch.linalg.svd(acts_ND - mean_D, full_matrices=False).Vh[:n_components]
    W_dec_SD = torch.cat([dirs_CD, -dirs_CD]).contiguous()
    folder.mkdir(parents=True)
    save_file({"W_enc": W_dec_SD.T.contiguous(), "W_dec": W_dec_SD, "b_enc": torch.zeros(2 * n_components),
               "b_dec": mean_D.contiguous()}, str(folder / WEIGHTS_FILE))
    SAEMeta(name=folder.name, trainer="pca", seed=0, architecture="relu", k=None, d_in=acts_ND.shape[1],
            d_sae=2 * n_components, model_name=cfg.model.name, model_source=cfg.model.source, layer=cfg.model.layer,
            hook_name=cfg.model.hook, train_tokens=0, l0_target=None, final_l0=None, norm_scale=1.0).write(folder)


@pytest.fixture(scope="module")
def mlp_run(tiny_model_dir):
    """A run harvested at the MLP output of layer 1, one SAE fitted on that cache, core and absorption
    evaluated."""
    from cache_tools import open_store
    from pipeline.evaluate import evaluate
    from pipeline.harvest import harvest

    run_dir = Path(tempfile.mkdtemp(prefix="fc-sae-hook-run-")) / "run"
    cfg = hook_cfg(MLP_HOOK, "eval.options.absorption.word_sample=300")
    store = open_store(harvest(cfg, run_dir, progress=False))
    acts_ND = torch.from_numpy(store.read_rows(0, store.n_rows))
    _pca_sae(run_dir / "saes" / "pca_s0", acts_ND, 16, cfg)
    evaluate(cfg, run_dir, evals=["core", "absorption"])
    return run_dir, cfg, acts_ND


def test_core_splices_the_sae_in_at_its_hook(mlp_run, hooked_tiny):
    """Core's input norm is the cached MLP output's (not the residual stream's, 3x larger), and the SAE
    fitted on the MLP output reconstructs what core feeds it."""
    from eval.results import load

    run_dir, cfg, acts_ND = mlp_run
    core = load(run_dir).query("eval == 'core'")
    assert (core["status"] == "ok").all() and set(core["hook"]) == {MLP_HOOK}, core[["status", "error"]]
    values = core.set_index("metric")["value"]
    cached_norm = float(acts_ND.norm(dim=1).mean())
    ids = torch.randint(0, 1000, (4, 32), generator=torch.Generator().manual_seed(0))
    _, cache = hooked_tiny.run_with_cache(ids, names_filter="blocks.1.hook_resid_post")
    resid_norm = float(cache["blocks.1.hook_resid_post"].norm(dim=-1).mean())
    assert resid_norm > 2 * cached_norm
    assert values["l2_norm_in"] == pytest.approx(cached_norm, rel=0.1)
    assert values["explained_variance"] > 0.7


def test_absorption_probes_the_sae_hook(mlp_run, hooked_tiny):
    """The ground-truth probe and its activations are per hook, and hold the MLP output at the word
    position; the shared prompt activations serve the SAE's hook to sae-bench's calculator."""
    import pandas as pd

    from eval.absorption.main import SharedPromptActivations, word_token_pos
    from eval.results import load

    run_dir, cfg, _ = mlp_run
    rows = load(run_dir).query("eval == 'absorption'")
    assert set(rows["hook"]) == {MLP_HOOK}
    # The tiny random model's MLP output carries few first letters: sae-bench's rule may refuse it,
    # with that reason and no other.
    failed = rows[rows["status"] == "failed"]
    assert failed["error"].str.contains("letters have first-letter probe F1").all(), failed["error"]
    roots = list((run_dir / "eval_artifacts" / "absorption").iterdir())
    assert [r.name for r in roots] == ["pythia-14m_layer1_hook_mlp_out_words300_seed0_float32_bs64"]
    split = roots[0] / "probes" / "pythia-14m" / "layer_1"
    test_df = pd.read_csv(split / "test_df.csv", keep_default_na=False)
    assert set(test_df["HOOK_POINT"]) == {MLP_HOOK}
    acts_ND = np.load(split / "data.npz")["X_test"]
    token_pos = word_token_pos(hooked_tiny.tokenizer)
    prompts = list(test_df["prompt"][:64])  # sae-bench's first batch of probe prompts
    _, cache = hooked_tiny.run_with_cache(prompts, names_filter=MLP_HOOK)
    assert max_rel_diff(acts_ND[:64], cache[MLP_HOOK][:, token_pos].numpy()) < REL_TOL

    shared = SharedPromptActivations(hooked_tiny, 1, token_pos, Path(tempfile.mkdtemp()) / "acts.pt", hook=MLP_HOOK)
    _, served = shared.run_with_cache(prompts[:8], names_filter=["blocks.1.hook_resid_post"])
    assert max_rel_diff(served["blocks.1.hook_resid_post"][:, token_pos].numpy(),
                        cache[MLP_HOOK][:8, token_pos].numpy()) < REL_TOL
    with pytest.raises(ValueError, match="decoder block 1 asked for"):
        shared.run_with_cache(prompts[:2], names_filter=["blocks.0.hook_resid_post"])
