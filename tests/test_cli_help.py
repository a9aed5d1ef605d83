"""The CLI's help texts and unknown-name errors list what PRESETS and the registries hold (never a
hand-typed list), and listing them stays cheap."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from eval.spec import EVALS, EvalSpec, eval_names
from fc_base.errors import ConfigError
from pipeline.cli import build_parser, main
import pipeline.config as pipeline_config
from pipeline.config import PRESETS, apply_overrides, get_preset
from trainers.training.recipe import RECIPES, Recipe, recipe_names


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (nested) subcommand's parser by its command line (``config show``, ``train``, ...)."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[prefix + name] = sub
                out.update(_subparsers(sub, f"{prefix}{name} "))
    return out


def _text(parser: argparse.ArgumentParser) -> str:
    # argparse wraps help lines, breaking after hyphens too ("experiment-" / "extra").
    return re.sub(r"-\s+", "-", re.sub(r"\s+", " ", parser.format_help()))


def _commands_with(option: str) -> dict[str, argparse.ArgumentParser]:
    return {name: p for name, p in _subparsers(build_parser()).items() if option in p._option_string_actions}


def _assert_lists(text: str, names: list[str], where: str) -> None:
    missing = [n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]
    assert not missing, f"{where} help does not list {missing}"


def test_every_preset_option_lists_every_preset():
    commands = _commands_with("--preset")
    assert {"config show", "harvest", "train", "eval", "report", "run"} <= set(commands)
    for name, parser in commands.items():
        _assert_lists(_text(parser), list(PRESETS), name)


def test_trainer_and_eval_options_list_every_registry_entry():
    commands = _subparsers(build_parser())
    _assert_lists(_text(commands["train"]), recipe_names(), "train")
    _assert_lists(_text(commands["eval"]), eval_names(), "eval")
    _assert_lists(_text(commands["compare"]), recipe_names() + eval_names(), "compare")


def test_help_follows_the_registries(monkeypatch):
    # A preset, recipe or eval added anywhere shows up in help: nothing is typed twice.
    recipe_names(), eval_names()  # load the registries before adding to them
    monkeypatch.setattr(pipeline_config, "PRESETS", (*PRESETS, "zz-preset"))
    monkeypatch.setitem(RECIPES._items, "zz_recipe", Recipe("zz_recipe", "a recipe help must list", build=None))
    monkeypatch.setitem(EVALS._items, "zz_eval", EvalSpec("zz_eval", "an eval help must list", run=None))
    commands = _subparsers(build_parser())
    for name in ("config show", "run", "train"):
        _assert_lists(_text(commands[name]), ["zz-preset"], name)
    _assert_lists(_text(commands["train"]), ["zz_recipe"], "train")
    _assert_lists(_text(commands["eval"]), ["zz_eval"], "eval")
    _assert_lists(_text(commands["compare"]), ["zz_recipe", "zz_eval"], "compare")


def test_unknown_names_are_one_line_listing_the_real_choices(capsys):
    assert main(["config", "show", "--preset", "nope"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fc-sae: error: unknown preset 'nope' (available: {', '.join(PRESETS)})"]
    with pytest.raises(ConfigError) as e:
        apply_overrides(get_preset("tiny"), ["train.trainers=nope"])
    assert str(e.value) == f"train.trainers: unknown trainer 'nope' (allowed: {', '.join(recipe_names())})"
    with pytest.raises(ConfigError) as e:
        apply_overrides(get_preset("tiny"), ["eval.evals=nope"])
    assert str(e.value) == f"eval.evals: unknown eval 'nope' (allowed: {', '.join(eval_names())})"


_PROBE = """
import sys
from pipeline.cli import build_parser
commands = {{a.dest: a for a in build_parser()._actions}}["command"].choices
commands[{command!r}].format_help()
print(sorted(m for m in {modules!r} if m in sys.modules))
"""


@pytest.mark.parametrize("command, forbidden", [("run", ["torch", "pandas", "sae_bench"]), ("eval", ["sae_bench"])],
                         ids=["run", "eval"])
def test_help_imports_only_what_it_lists(command, forbidden):
    # A stage's help lists PRESETS without importing any plug-in; the eval listing imports the eval
    # modules but never sae-bench, which they import only inside run() (it takes seconds).
    probe = _PROBE.format(command=command, modules=tuple(forbidden))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
