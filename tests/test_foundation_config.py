import json
import subprocess
import sys

import pytest

from pipeline.config import PRESETS, ConfigError, RunConfig, apply_overrides, get_preset, resolve_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_resolve_and_round_trip(name, tmp_path):
    cfg = get_preset(name)
    assert cfg.preset == name
    path = cfg.save(tmp_path / "c.json")
    assert RunConfig.load(path) == cfg
    expected = "synthetic" if cfg.model.is_synthetic else f"blocks.{cfg.model.layer}.hook_resid_post"
    assert cfg.model.hook == expected


def test_every_preset_file_is_listed_and_every_listed_preset_has_a_file():
    from pipeline.config import PRESET_DIR

    assert sorted(p.stem for p in PRESET_DIR.glob("*.yaml")) == sorted(PRESETS)


def test_a_preset_extends_its_parent_field_by_field():
    experiment, gpu = get_preset("experiment"), get_preset("experiment-gpu")
    assert gpu.train.d_sae == 16384 and gpu.train.precision == "float32" and [p.k for p in gpu.train.sweep] == [32]
    assert gpu.harvest == experiment.harvest and gpu.model == experiment.model and gpu.model.dtype == "bfloat16"
    extra = get_preset("experiment-extra")
    assert {p.label: p.options["relu_l1"]["l1_coeff"] for p in extra.train.sweep} == {"k32": 0.889, "k16": 1.15,
                                                                                     "k64": 0.678}


def test_a_bad_preset_file_is_one_error_naming_the_file_and_field(tmp_path, monkeypatch):
    import pipeline.config as config

    monkeypatch.setattr(config, "PRESET_DIR", tmp_path)
    monkeypatch.setattr(config, "PRESETS", ("a", "b"))
    (tmp_path / "a.yaml").write_text("extends: b\ntrain: {k: 4}\n")
    (tmp_path / "b.yaml").write_text("train: {d_sae: 64, nonsense: 1}\n")
    with pytest.raises(ConfigError, match=r"b.yaml: .*train.nonsense"):
        config.get_preset("b")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ConfigError, match=r"preset 'a' extends itself \(a -> b -> a\)"):
        config.get_preset("a")


def test_yaml_file_overrides_a_preset(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("preset: tiny\ntrain:\n  k: 4\nmodel:\n  layer: 0\n")
    cfg = RunConfig.load(p)
    assert cfg.preset == "tiny" and cfg.train.k == 4 and cfg.model.hook == "blocks.0.hook_resid_post"
    assert cfg.train.d_sae == get_preset("tiny").train.d_sae


def test_overrides_parse_json_values():
    cfg = apply_overrides(get_preset("tiny"), ["train.seeds=[3,4]", "model.dtype=bfloat16"])
    assert cfg.train.seeds == [3, 4] and cfg.model.dtype == "bfloat16"


@pytest.mark.parametrize("bad, fragment", [
    (["harvest.chunk_rows=1000"], "chunk_rows"),
    (["model.dtype=int8"], "model.dtype"),
    (["train.trainers=[\"nope\"]"], "unknown trainer"),
    (["harvest.nonsense=1"], "unknown config field harvest.nonsense"),
])
def test_invalid_values_name_the_field(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        resolve_config("tiny", None, bad)


def test_unknown_field_in_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"preset": "tiny", "model": {"layers": 3}}))
    with pytest.raises(ConfigError, match="model.layers"):
        RunConfig.load(p)


def test_cli_config_show_and_one_line_errors():
    ok = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "show", "--preset", "demo"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["model"]["name"] == "google/gemma-3-270m"
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "show", "--preset", "tiny",
                          "--set", "corpus.context_length=1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == ["fc-sae: error: corpus.context_length must be >= 2, got 1"]
