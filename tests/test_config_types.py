"""Config values are read as their field's declared type (``--set`` text, JSON and YAML files,
``RunConfig.from_dict``), option groups by their options dataclasses; a value that cannot be read
so is one ConfigError line naming the dotted field, the value and the type, before any work."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types
import typing

import pytest
import yaml

from eval.spec import option_sections as eval_sections
from fc_base.errors import ConfigError
from pipeline.config import RunConfig, apply_overrides, coerce, get_preset
from trainers.training.recipe import option_sections as trainer_sections


def _overridden(*items: str) -> RunConfig:
    return apply_overrides(get_preset("tiny"), list(items))


def _error(*items: str) -> str:
    with pytest.raises(ConfigError) as e:
        _overridden(*items)
    return str(e.value)


# ---- files -------------------------------------------------------------------------------------

def test_yaml_scientific_notation_loads_as_a_float(tmp_path):
    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}  # YAML 1.1: no dot, so not a float
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\ntrain:\n  lr: 1e-3\n  n_tokens: 4e4\n  options:\n    fc:\n      z: 5e-1\n")
    cfg = RunConfig.load(path)
    assert type(cfg.train.lr) is float and cfg.train.lr == 0.001
    assert type(cfg.train.n_tokens) is int and cfg.train.n_tokens == 40_000
    assert cfg.train.options["fc"]["z"] == 0.5


def test_json_file_strings_are_read_as_their_fields(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "tiny", "train": {"k": "4", "seeds": ["0", 1]},
                                "harvest": {"exclude_bos": "false"},
                                "eval": {"options": {"absorption": {"word_sample": "null", "max_k": "2"}}}}))
    cfg = RunConfig.load(path)
    assert (cfg.train.k, cfg.train.seeds, cfg.harvest.exclude_bos) == (4, [0, 1], False)
    assert cfg.eval.options["absorption"]["word_sample"] is None and cfg.eval.options["absorption"]["max_k"] == 2


@pytest.mark.parametrize("section, values, message", [
    ("train", {"k": 1.5}, "train.k must be int, got 1.5"),
    ("train", {"k": True}, "train.k must be int, got True"),
    ("train", {"lr": True}, "train.lr must be float, got True"),
    ("train", {"seeds": 0}, "train.seeds must be list[int], got 0"),
    ("model", {"name": 3}, "model.name must be str, got 3"),
    ("harvest", {"exclude_bos": 1}, "harvest.exclude_bos must be bool, got 1"),
    ("train", {"tracker": [0.9]}, "train.tracker must be a mapping, got [0.9]"),
    ("eval", {"options": {"core": {"n_docs": 1.5}}}, "eval.options.core.n_docs must be int, got 1.5"),
])
def test_wrong_types_in_files_are_not_converted(section, values, message, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"preset": "tiny", section: values}))
    with pytest.raises(ConfigError) as e:
        RunConfig.load(path)
    assert str(e.value) == message


def test_from_dict_reads_text_values():
    data = get_preset("tiny").to_dict()
    data["train"].update(lr="1e-3", k="16", trainer_seeds={"topk": ["0"]})
    data["train"]["sweep"] = [{"label": "k4", "k": "4", "options": {"relu_l1": {"l1_coeff": "2"}}}]
    cfg = RunConfig.from_dict(data)
    assert (cfg.train.lr, cfg.train.k, cfg.train.trainer_seeds) == (0.001, 16, {"topk": [0]})
    point = cfg.train.sweep[0]
    assert point.k == 4 and point.options == {"relu_l1": {"l1_coeff": 2.0}}
    assert type(point.options["relu_l1"]["l1_coeff"]) is float


# ---- --set ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("item, read, expected", [
    ("train.lr=1e-3", lambda c: c.train.lr, 0.001),
    ("train.k=16", lambda c: c.train.k, 16),
    ("train.n_tokens=1e5", lambda c: c.train.n_tokens, 100_000),
    ("harvest.exclude_bos=false", lambda c: c.harvest.exclude_bos, False),
    ("harvest.exclude_bos=True", lambda c: c.harvest.exclude_bos, True),
    ("train.seeds=0,1", lambda c: c.train.seeds, [0, 1]),
    ("train.seeds=[2, 3]", lambda c: c.train.seeds, [2, 3]),
    ("train.trainers=topk,relu_l1", lambda c: c.train.trainers, ["topk", "relu_l1"]),
    ("train.tracker.projection_dim=8", lambda c: c.train.tracker.projection_dim, 8),
    ("train.tracker.projection_dim=null", lambda c: c.train.tracker.projection_dim, None),
    ("corpus.revision=2024", lambda c: c.corpus.revision, "2024"),  # text for a str field stays text
])
def test_overrides_are_read_as_the_field_type(item, read, expected):
    value = read(_overridden(item))
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("item, message", [
    ("train.k=abc", "train.k must be int, got 'abc'"),
    ("train.k=1.5", "train.k must be int, got '1.5'"),
    ("train.lr=abc", "train.lr must be float, got 'abc'"),
    ("harvest.exclude_bos=maybe", "harvest.exclude_bos must be bool, got 'maybe'"),
    ("train.seeds=0,x", "train.seeds[1] must be int, got 'x'"),
    ("train.seeds=[0,", "train.seeds must be list[int], got '[0,'"),
    ("train.tracker.projection_dim=abc", "train.tracker.projection_dim must be int, got 'abc'"),
    ('train.trainer_seeds={"topk": ["a"]}', "train.trainer_seeds.topk[0] must be int, got 'a'"),
    ('train.sweep=[{"label": "a", "k": "x"}]', "train.sweep[0].k must be int, got 'x'"),
])
def test_a_bad_override_is_one_line_naming_the_field(item, message):
    assert _error(item) == message


def test_every_field_set_to_its_own_text_gives_the_same_config():
    for name in ("tiny", "experiment-extra"):  # experiment-extra: a sweep with option overrides
        cfg = get_preset(name)
        items = [f"{path}={text}" for path, text in _leaf_texts(cfg.to_dict())]
        assert apply_overrides(cfg, items) == cfg, name


def _leaf_texts(data: dict, prefix: str = ""):
    """(dotted path, the value as one would type it after --set) of every leaf of a config dict."""
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _leaf_texts(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value if isinstance(value, str) else json.dumps(value)


# ---- option groups -------------------------------------------------------------------------------

def test_option_groups_are_read_by_their_dataclasses():
    cfg = _overridden("train.options.relu_l1.l1_coeff=2", "train.options.auxk.k=null",
                      "train.options.matryoshka.group_fractions=0.5,0.5", "eval.options.absorption.word_sample=2000",
                      "eval.options.sae_probes.llm_baseline=false", "eval.options.sae_probes.ks=1,2")
    relu = cfg.train.options["relu_l1"]["l1_coeff"]
    assert relu == 2.0 and type(relu) is float
    assert cfg.train.options["auxk"]["k"] is None
    assert cfg.train.options["matryoshka"]["group_fractions"] == [0.5, 0.5]
    absorption, probes = cfg.eval.options["absorption"], cfg.eval.options["sae_probes"]
    assert absorption["word_sample"] == 2000 and probes["llm_baseline"] is False and probes["ks"] == [1, 2]
    assert cfg.train.option(trainer_sections()["relu_l1"]).l1_coeff == 2.0


def test_a_bad_type_in_an_eval_option_group_names_it():
    assert _error("eval.options.absorption.max_k=abc") == "eval.options.absorption.max_k must be int, got 'abc'"
    assert _error("eval.options.sae_probes.ks=1,x") == "eval.options.sae_probes.ks[1] must be int, got 'x'"
    assert (_error('eval.options.core={"n_docs": "many"}')
            == "eval.options.core.n_docs must be int, got 'many'")
    assert _error("eval.options.sae_probes.llm_baseline=2") == "eval.options.sae_probes.llm_baseline must be bool, got '2'"


def _numeric_option_fields():
    """(dotted path, declared type) of every int, float or bool field of every registered option group."""
    for prefix, sections in (("train", trainer_sections()), ("eval", eval_sections())):
        for section, cls in sections.items():
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                tp = hints[f.name]
                arms = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
                if any(a in (int, float, bool) for a in arms):
                    yield f"{prefix}.options.{section}.{f.name}", tp


def test_every_numeric_option_field_rejects_text_that_is_no_number():
    fields = list(_numeric_option_fields())
    assert len(fields) > 10
    for path, tp in fields:
        message = _error(f"{path}=abc")
        assert message.startswith(f"{path} must be ") and message.endswith("got 'abc'"), message


# ---- the reader --------------------------------------------------------------------------------

@pytest.mark.parametrize("value, tp, expected", [
    ("1e-3", float, 0.001), (3, float, 3.0), (" 32 ", int, 32), (2.0, int, 2), ("1_000", int, 1000),
    ("off", bool, False), ("none", int | None, None), ("", int | None, None), ("null", str | None, None),
    ("none", str | None, "none"), ("[1, 2]", list[float], [1.0, 2.0]), ("", list[int], []),
    ('{"a": "1"}', dict[str, int], {"a": 1}), ((1, 2), list[int], [1, 2]),
])
def test_coerce_reads_text_and_lossless_numbers(value, tp, expected):
    out = coerce(value, tp, "x")
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("value, tp", [
    (1.5, int), ("1.5", int), ("inf", int), (True, int), (False, float), ("abc", float), ("yes please", bool),
    (1, bool), (3, str), (["a"], str), ("[1,", list[int]), ({"a": 1}, list[int]), ("abc", int | None),
])
def test_coerce_refuses_what_would_change_the_value(value, tp):
    with pytest.raises(ConfigError, match=r"^x(\[\d\])? must be "):
        coerce(value, tp, "x")


# ---- the command line ----------------------------------------------------------------------------

def test_cli_bad_override_is_one_line_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "--preset", "tiny", "--run-dir", str(run_dir),
                          "--set", "train.k=abc"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == ["fc-sae: error: train.k must be int, got 'abc'"]
    assert not run_dir.exists()


def test_cli_yaml_config_shows_typed_values(tmp_path, capsys):
    from pipeline.cli import main

    path = tmp_path / "c.yml"
    path.write_text("preset: tiny\ntrain:\n  lr: 1e-3\n")
    assert main(["config", "show", "--config", str(path), "--set", "train.seeds=0,1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["train"]["lr"] == 0.001 and shown["train"]["seeds"] == [0, 1]
