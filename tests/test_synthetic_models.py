"""Synthetic models as a model source: named configs, custom config files, build-once storage with
provenance, and deterministic sampling.  Only ``synth/tiny`` and tiny custom configs are built
(about a second each); the 16k recipe is checked on its config object alone."""
from __future__ import annotations

import json

import pytest
import sae_lens
import torch
import yaml
from sae_lens.synthetic import SyntheticModel

from fc_base.errors import ConfigError
from pipeline import synthetic_models as sm

TINY = "synth/tiny"

# A small custom model: the fields are SyntheticModelConfig's, nested configs as mappings.
CUSTOM = {
    "num_features": 64,
    "hidden_dim": 16,
    "firing_probability": {"generator_name": "zipfian", "exponent": 0.5, "max_prob": 0.3, "min_prob": 0.01},
    "hierarchy": {"total_root_nodes": 2, "branching_factor": 3, "max_depth": 2,
                  "mutually_exclusive_portion": 1.0},
    "orthogonalization": {"num_steps": 5, "lr": 3e-4},
    "correlation": {"rank": 4, "correlation_scale": 0.1},
    "mean_firing_magnitudes": {"generator_name": "linear", "start": 2.0, "end": 1.0},
    "std_firing_magnitudes": 0.1,
    "bias": 0.5,
    "seed": 7,
}


def _write(tmp_path, name: str, data) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if name.endswith((".yaml", ".yml")) else json.dumps(data))
    return str(path)


def _rows(model, n_rows: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(sm.sample_batches(model, n_rows, batch_size, seed))
    return torch.cat([a for a, _ in batches]), torch.cat([f for _, f in batches])


def test_names_and_d_model():
    assert sm.is_synthetic_name("synth/tiny") and not sm.is_synthetic_name("EleutherAI/pythia-14m")
    assert set(sm.synthetic_model_names()) == {"synth/sae-bench-16k", "synth/4k-256", "synth/1k-64", TINY}
    assert sm.synthetic_d_model("synth/sae-bench-16k") == 768
    assert sm.synthetic_d_model(TINY) == 32


def test_16k_config_has_the_published_numbers():
    cfg = sm.synthetic_config("synth/sae-bench-16k")
    assert (cfg.num_features, cfg.hidden_dim, cfg.seed, cfg.bias, cfg.dtype) == (16384, 768, 42, 0.5, "float32")
    fp = cfg.firing_probability
    assert (fp.generator_name(), fp.exponent, fp.max_prob, fp.min_prob) == ("zipfian", 0.5, 0.4, 5e-4)
    h = cfg.hierarchy
    assert (h.total_root_nodes, h.branching_factor, h.max_depth) == (128, 4, 3)
    assert (h.mutually_exclusive_portion, h.mutually_exclusive_min_depth) == (1.0, 0)
    assert h.compensate_probabilities and h.scale_children_by_parent
    assert (cfg.orthogonalization.num_steps, cfg.orthogonalization.lr) == (100, 3e-4)
    assert (cfg.correlation.rank, cfg.correlation.correlation_scale) == (25, 0.1)
    mean, std = cfg.mean_firing_magnitudes, cfg.std_firing_magnitudes
    assert (mean.generator_name(), mean.start, mean.end) == ("linear", 5.0, 4.0)
    assert (std.generator_name(), std.mean, std.std) == ("folded_normal", 0.5, 0.5)


@pytest.mark.parametrize("name,size", [
    ("synth/4k-256", (4096, 256, 32, 100)),
    ("synth/1k-64", (1024, 64, 8, 100)),
    (TINY, (128, 32, 1, 10)),
])
def test_cpu_variants_keep_the_recipe(name, size):
    ref = sm.synthetic_config("synth/sae-bench-16k").to_dict()
    cfg = sm.synthetic_config(name).to_dict()
    got = (cfg["num_features"], cfg["hidden_dim"], cfg["hierarchy"]["total_root_nodes"],
           cfg["orthogonalization"]["num_steps"])
    assert got == size
    for d in (ref, cfg):
        for key in ("num_features", "hidden_dim"):
            d.pop(key)
        d["hierarchy"].pop("total_root_nodes")
        d["orthogonalization"].pop("num_steps")
    assert cfg == ref


def test_build_save_load_round_trip_and_no_rebuild(fc_home):
    folder = sm.ensure_synthetic_model(TINY)
    assert folder.parent.parent == fc_home / "synthetic" and (folder / sm.PROVENANCE_FILE).is_file()
    builds, mtime = sm._builds_in_process, (folder / sm.PROVENANCE_FILE).stat().st_mtime_ns
    assert sm.ensure_synthetic_model(TINY) == folder
    assert sm._builds_in_process == builds
    assert (folder / sm.PROVENANCE_FILE).stat().st_mtime_ns == mtime
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")]

    fresh = SyntheticModel(sm.synthetic_config(TINY))  # built in memory, never saved
    loaded = sm.load_synthetic_model(TINY)
    assert torch.equal(fresh.feature_dict.feature_vectors, loaded.feature_dict.feature_vectors)
    a1, f1 = _rows(fresh, 1500, 512, seed=3)
    a2, f2 = _rows(loaded, 1500, 512, seed=3)
    assert torch.equal(a1, a2) and torch.equal(f1, f2)


def test_sampling_is_deterministic_per_seed_and_leaves_global_rng_alone():
    model = sm.load_synthetic_model(TINY)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a1, f1 = _rows(model, 2500, 1024, seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    a2, f2 = _rows(model, 2500, 1024, seed=0)
    assert torch.equal(a1, a2) and torch.equal(f1, f2)
    assert a1.dtype == torch.float32 and a1.shape == (2500, 32) and f1.shape == (2500, 128)
    # The ground truth explains the activations: acts = features @ dictionary + bias.
    recon = f1 @ model.feature_dict.feature_vectors + model.feature_dict.bias
    assert torch.allclose(a1, recon, atol=1e-5)
    # The row stream does not depend on how it is cut into batches.
    a3, _ = _rows(model, 2000, 300, seed=0)
    assert torch.equal(a3, a1[:2000])
    a4, _ = _rows(model, 2500, 1024, seed=1)
    assert not torch.equal(a1, a4)
    sizes = [a.shape[0] for a, _ in sm.sample_batches(model, 2500, 1024, seed=0)]
    assert sizes == [1024, 1024, 452]


def test_unknown_name_is_one_clear_config_error():
    with pytest.raises(ConfigError, match=r"unknown synthetic model 'synth/nope'; known: .*synth/tiny"):
        sm.synthetic_config("synth/nope")
    with pytest.raises(ConfigError, match="synth/<name>"):
        sm.synthetic_config("gpt2")
    with pytest.raises(ConfigError, match="cannot be redefined"):
        sm.synthetic_config(TINY, config_file="whatever.yaml")


@pytest.mark.parametrize("patch,pattern", [
    ({"num_featurs": 64}, r"unknown field 'num_featurs'; allowed: num_features, hidden_dim"),
    ({"hierarchy": {"total_root_nodes": 2, "depth": 2}}, r"\.hierarchy: unknown field 'depth'; allowed: .*max_depth"),
    ({"firing_probability": {"generator_name": "zipf"}}, r"generator_name: 'zipf' is not one of .*zipfian"),
    ({"seed": None}, r"\.seed: required, an integer"),
    ({"hierarchy": {"branching_factor": 1}}, r"branching_factor must be at least 2"),
    ({"dtype": "float8"}, r"\.dtype: 'float8' is not one of"),
])
def test_invalid_custom_config_is_one_clear_config_error(tmp_path, patch, pattern):
    path = _write(tmp_path, "bad.json", {**CUSTOM, **patch})
    with pytest.raises(ConfigError, match=pattern) as err:
        sm.synthetic_config("synth/bad", config_file=path)
    assert "\n" not in str(err.value) and "bad.json" in str(err.value)


def test_custom_config_file_builds_with_provenance(tmp_path, fc_home):
    path = _write(tmp_path, "custom.yaml", CUSTOM)
    cfg = sm.synthetic_config("synth/custom-64", config_file=path)
    assert (cfg.num_features, cfg.hidden_dim, cfg.hierarchy.branching_factor) == (64, 16, 3)
    assert sm.synthetic_d_model("synth/custom-64", config_file=path) == 16

    prov = sm.synthetic_provenance("synth/custom-64", config_file=path)
    assert prov["sae_lens_version"] == sae_lens.__version__
    assert prov["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert prov["seed"] == 7 and prov["synthetic"] is True and "synthetic" in prov["statement"].lower()
    assert prov["build_seconds"] >= 0 and prov["config_hash"] == sm.config_hash(cfg)
    folder = sm.synthetic_model_dir("synth/custom-64", config_file=path)
    assert folder == fc_home / "synthetic" / "custom-64" / sm.config_hash(cfg)

    # The same fields as JSON are the same model: no second build.
    builds = sm._builds_in_process
    json_path = _write(tmp_path, "custom.json", CUSTOM)
    assert sm.ensure_synthetic_model("synth/custom-64", config_file=json_path) == folder
    assert sm._builds_in_process == builds
    model = sm.load_synthetic_model("synth/custom-64", config_file=json_path)
    acts, feats = next(sm.sample_batches(model, 10, 10, seed=0))
    assert acts.shape == (10, 16) and feats.shape == (10, 64)


def test_crashed_build_leftovers_never_load(tmp_path):
    path = _write(tmp_path, "left.json", {**CUSTOM, "seed": 8})
    final = sm.synthetic_model_dir("synth/leftovers", config_file=path)
    final.parent.mkdir(parents=True)
    stale = final.parent / f".tmp-{final.name}-crashed"
    stale.mkdir()
    (stale / "synthetic_model_config.json").write_text("{}")
    final.mkdir()  # a half folder without provenance.json: must not count as built
    (final / "synthetic_model_config.json").write_text("{}")

    builds = sm._builds_in_process
    assert sm.ensure_synthetic_model("synth/leftovers", config_file=path) == final
    assert sm._builds_in_process == builds + 1
    assert not stale.exists() and (final / sm.PROVENANCE_FILE).is_file()
    assert [p.name.startswith(".broken-") for p in final.parent.iterdir() if p.is_dir()].count(True) == 1
    sm.load_synthetic_model("synth/leftovers", config_file=path)
