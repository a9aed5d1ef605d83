"""The package structure: the dependency rule, the rule among the trainers sub-packages, acyclic
harvest, cache and trainers modules, and plug-in recipes and evals that the CLI lists and that
train/run on the tiny preset."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"fc_base": 0, "cache_tools": 1, "trainers": 1, "eval": 1, "pipeline": 2, "flows": 3}
"""flows -> pipeline -> {trainers, eval, cache_tools} -> fc_base; never back, never sideways among layer 1."""


def _names_imported(node: ast.AST) -> set[str]:
    """The modules an import statement names (none for other nodes, or relative imports)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return {node.module}
    return set()


def _imports(path: Path) -> set[str]:
    """Top-level project packages and modules imported anywhere in a file (lazy imports included)."""
    return {n for node in ast.walk(ast.parse(path.read_text())) for n in _names_imported(node)}


def _import_time_imports(path: Path) -> set[str]:
    """Modules imported when the file is imported: module-level statements only (not function
    bodies, not ``if TYPE_CHECKING:`` blocks)."""
    return {n for node in ast.parse(path.read_text()).body for n in _names_imported(node)}


def _project_imports(package: str) -> dict[str, set[str]]:
    """Project imports of every module of ``package``, its subpackages included."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        out[path.relative_to(ROOT).as_posix()] = {n for n in _imports(path) if n.split(".")[0] in LAYERS}
    return out


@pytest.mark.parametrize("package", ["fc_base", "cache_tools", "trainers", "eval"])
def test_lower_layers_never_import_upward_or_sideways(package):
    for where, names in _project_imports(package).items():
        for name in names:
            top = name.split(".")[0]
            assert top == package or LAYERS[top] < LAYERS[package], f"{where} imports {name}"


TRAINERS_INTERFACES = {"trainers.saes.sae", "trainers.fc.tracker"}
"""The two modules of saes and fc that the machinery may name: the base every SAE module is, and the
tracker the loop runs on every SAE."""
TRAINERS_ASSEMBLY = {"trainers.training.loop", "trainers.training.registry"}
"""The machinery's modules that put everything together; the plug-ins never import them."""


def _trainers_import_allowed(where: str, name: str) -> bool:
    """Inside trainers, packages by what a researcher changes:

    - ``saes`` (an architecture: its module, options and recipe) imports ``saes`` and the machinery's
      contract (``training`` but its loop and registry); never ``fc``: an architecture knows nothing
      of the FC method;
    - ``fc`` (the FC method: tracker, splitting, repair, guidance, its recipes) imports ``fc``,
      ``saes`` (its recipes wrap the architectures) and the machinery's contract;
    - ``training`` (the machinery) names no architecture and no FC rule: beyond itself it imports
      only the interfaces ``saes/sae.py`` and ``fc/tracker.py``, and reaches every recipe through
      the registry, ``training/registry.py``, the one module that imports the recipe modules;
    - ``reference`` (other implementations, trained by their own loops) may import anything but the
      registry, and only the registry imports it.
    """
    into = name.split(".")[1] if name.count(".") else ""
    here = where.split("/")[1] if where.count("/") > 1 else ""
    if where == "trainers/training/registry.py":
        return True
    if into == "reference" or name == "trainers.training.registry":
        return here == "reference" and name != "trainers.training.registry"
    if here == "reference":
        return True
    if here == "saes":
        return into in ("saes", "training") and name not in TRAINERS_ASSEMBLY
    if here == "fc":
        return into in ("fc", "saes", "training") and name not in TRAINERS_ASSEMBLY
    if here == "training":
        return into == "training" or name in TRAINERS_INTERFACES
    return False  # trainers/__init__.py stays free of imports: importing a config must not pull in torch


def test_trainers_packages_follow_their_rule():
    for where, names in _project_imports("trainers").items():
        for name in names:
            if name.split(".")[0] == "trainers":
                assert _trainers_import_allowed(where, name), (
                    f"{where} imports {name}: {_trainers_import_allowed.__doc__}")


def test_trainers_rule_rejects_sideways_imports():
    assert not _trainers_import_allowed("trainers/saes/relu_l1.py", "trainers.fc.splitting")
    assert not _trainers_import_allowed("trainers/training/loop.py", "trainers.saes.batchtopk")
    assert not _trainers_import_allowed("trainers/training/loop.py", "trainers.fc.splitting")
    assert not _trainers_import_allowed("trainers/fc/guidance.py", "trainers.training.loop")
    assert not _trainers_import_allowed("trainers/fc/recipes.py", "trainers.reference.saelens")
    assert _trainers_import_allowed("trainers/fc/recipes.py", "trainers.saes.topk")
    assert _trainers_import_allowed("trainers/training/loop.py", "trainers.fc.tracker")


def test_trainers_import_trainers_at_module_level():
    """No ``from trainers...`` inside a function: a lazy import hides the cycle it works around."""
    for path in sorted((ROOT / "trainers").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lazy = {n for sub in ast.walk(node) for n in _names_imported(sub) if n.split(".")[0] == "trainers"}
                assert not lazy, f"{path.relative_to(ROOT)}: {node.name} imports {sorted(lazy)}"


@pytest.mark.parametrize("package", ["trainers", "cache_tools", "eval"])
def test_modules_are_acyclic_at_import_time(package):
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (ROOT / package).rglob("*.py")}
    graph = {m: {n for n in _import_time_imports(p) if n in modules and n != m} for m, p in modules.items()}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join(path[path.index(module):] + (module,))}"
        if module in done:
            return
        for name in graph[module]:
            visit(name, path + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())


EVAL_SHARED = {"eval.spec", "eval.config", "eval.runtime", "eval.results", "eval.sae", "eval.detection",
               "eval.random_sae"}
"""What every eval may use: the plug-in contract and the modules the evals share."""


def _eval_import_allowed(where: str, name: str) -> bool:
    """Inside eval, one folder per eval (SAE-Bench's layout):

    - an eval folder (``eval/<name>/``) imports its own folder and the shared modules, never another
      eval's folder: an eval is removed by deleting its folder and its line in ``eval/registry.py``;
    - the shared modules import each other, never an eval folder;
    - ``eval/registry.py`` is the one module that imports the evals.
    """
    parts = where.split("/")
    if where == "eval/registry.py":
        return True
    if len(parts) > 2:  # inside eval/<name>/
        return name.startswith(f"eval.{parts[1]}.") or name == f"eval.{parts[1]}" or name in EVAL_SHARED
    return name in EVAL_SHARED or name == "eval"


def test_eval_packages_follow_their_rule():
    for where, names in _project_imports("eval").items():
        for name in names:
            if name.split(".")[0] == "eval":
                assert _eval_import_allowed(where, name), f"{where} imports {name}: {_eval_import_allowed.__doc__}"


def test_eval_rule_rejects_sideways_imports():
    assert not _eval_import_allowed("eval/synthetic/main.py", "eval.absorption.metrics")
    assert not _eval_import_allowed("eval/results.py", "eval.absorption.main")
    assert _eval_import_allowed("eval/absorption/main.py", "eval.absorption.k_sparse")
    assert _eval_import_allowed("eval/synthetic/main.py", "eval.detection")


ANALYSIS_MAY_IMPORT = ("pipeline.analysis", "pipeline.config", "eval.results", "eval.absorption.metrics",
                       "trainers.training.recipe", "fc_base")
"""The analysis reads the results table and the SAE folders: it names the table's module, the metric
names, the recipe registry (for the controls' labels) and the run config, and runs nothing else."""


def test_analysis_reads_results_and_runs_nothing():
    for path in sorted((ROOT / "pipeline" / "analysis").rglob("*.py")):
        for name in _imports(path):
            if name.split(".")[0] in LAYERS and name != "pipeline":
                assert name.startswith(ANALYSIS_MAY_IMPORT), f"{path.relative_to(ROOT)} imports {name}"
    for package in ("eval", "trainers", "cache_tools", "fc_base"):
        for where, names in _project_imports(package).items():
            assert not any(n.startswith("pipeline") for n in names), where


def test_pipeline_never_imports_flows():
    for where, names in _project_imports("pipeline").items():
        assert not any(n.split(".")[0] == "flows" for n in names), where


def test_harvest_modules_are_acyclic():
    groups = _imports(ROOT / "pipeline" / "harvest_groups.py")
    dask = _imports(ROOT / "pipeline" / "harvest_dask.py")
    synthetic = _imports(ROOT / "pipeline" / "synthetic_harvest.py")
    assert not groups & {"pipeline.harvest", "pipeline.harvest_dask", "pipeline.synthetic_harvest",
                         "pipeline.model_source"}
    assert "pipeline.harvest" not in dask and "pipeline.model_source" not in synthetic


def test_only_the_model_source_asks_which_kind_of_model_a_run_has():
    """The stages ask ``pipeline.model_source.model_source(cfg)``; only it (and the config that
    validates the name) reads ``cfg.model.is_synthetic``."""
    allowed = {"pipeline/config.py", "pipeline/model_source.py"}
    for folder in ("pipeline", "flows", "eval", "trainers"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            if where not in allowed:
                assert "model.is_synthetic" not in path.read_text(), where


def test_cache_and_eval_modules_import_each_other_at_module_level():
    """No lazy import between the store's modules or between eval's shared modules: with no import
    cycle (above) there is nothing for one to hide. (``fc-cache``'s entry point imports its commands
    lazily so that ``--help`` starts fast.)"""
    for package in ("cache_tools", "eval"):
        for path in sorted(p for p in (ROOT / package).glob("*.py") if p.name != "cli.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lazy = {n for sub in ast.walk(node) for n in _names_imported(sub)
                            if n.split(".")[0] == package and n.count(".") == 1}
                    assert not lazy, f"{path.relative_to(ROOT)}: {node.name} imports {sorted(lazy)}"


def test_absorption_constants_match_sae_bench():
    from sae_bench.evals.absorption.prompting import VERBOSE_FIRST_LETTER_TEMPLATE
    from sae_bench.evals.absorption.vocab import LETTERS

    from eval.absorption.main import LETTERS as ours
    from eval.absorption.main import TEMPLATE

    assert TEMPLATE == VERBOSE_FIRST_LETTER_TEMPLATE and list(ours) == list(LETTERS)


def _help(command: str, capsys) -> str:
    from pipeline.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def test_help_lists_every_recipe_and_eval(capsys):
    from eval.spec import eval_names
    from trainers.training.recipe import recipe_names

    text = _help("train", capsys)
    assert {"topk", "fc_topk", "relu_l1", "fc_relu_l1", "batchtopk", "fc_batchtopk", "matryoshka",
            "fc_matryoshka"} <= set(recipe_names())
    for name in recipe_names():
        assert f"  {name} " in text
    text = _help("eval", capsys)
    for name in eval_names():
        assert f"  {name} " in text


def test_legacy_flat_config_loads_into_options(tmp_path):
    from pipeline.config import RunConfig, get_preset

    data = get_preset("tiny").to_dict()
    data["train"].pop("options")
    data["train"].update(l1_coeff=3.5, max_split_frac=0.03, matryoshka_fractions=[0.5, 0.5], auxk_alpha=0.1)
    data["eval"].pop("options")
    data["eval"].update(absorption_word_sample=2000, core_n_docs=10, hub_check_timeout_s=1.0)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    cfg = RunConfig.load(path)
    assert cfg.train.options["relu_l1"]["l1_coeff"] == 3.5
    assert cfg.train.options["fc"]["max_split_frac"] == 0.03
    assert cfg.train.options["matryoshka"]["group_fractions"] == [0.5, 0.5]
    assert cfg.train.options["auxk"]["alpha"] == 0.1
    assert cfg.eval.options["absorption"]["word_sample"] == 2000
    assert cfg.eval.options["core"]["n_docs"] == 10
    assert cfg.eval.options["network"]["hub_check_timeout_s"] == 1.0


def test_unknown_option_fields_are_one_clear_error():
    from fc_base.errors import ConfigError
    from pipeline.config import apply_overrides, get_preset

    with pytest.raises(ConfigError, match="unknown config field train.options.fc.nope"):
        apply_overrides(get_preset("tiny"), ["train.options.fc.nope=1"])
    with pytest.raises(ConfigError, match="unknown config field train.options.nope"):
        apply_overrides(get_preset("tiny"), ['train.options={"nope": {}}'])
    with pytest.raises(ConfigError, match="unknown trainer 'nope'"):
        apply_overrides(get_preset("tiny"), ['train.trainers=["nope"]'])
    cfg = apply_overrides(get_preset("tiny"), ["train.options.relu_l1.l1_coeff=2.5"])
    assert cfg.train.options["relu_l1"]["l1_coeff"] == 2.5


@pytest.fixture(scope="module")
def every_recipe_trained(tiny_model_dir, tmp_path_factory):
    """Every registered recipe, seed 0, trained through the real loop on the tiny preset's cache."""
    from pipeline.config import apply_overrides, get_preset
    from pipeline.harvest import harvest
    from pipeline.train import train
    from trainers.training.recipe import recipe_names

    run_dir = tmp_path_factory.mktemp("recipes") / "run"
    cfg = apply_overrides(get_preset("tiny"), [f"train.trainers={json.dumps(recipe_names())}",
                                               "train.options.fc.z=0.5"])
    harvest(cfg, run_dir, progress=False)
    return {p.name.rsplit("_s", 1)[0]: p for p in train(cfg, run_dir, progress=False)}


def test_every_recipe_trains_on_the_tiny_preset(every_recipe_trained):
    from fc_base.sae_folder import SAEMeta
    from trainers.fc.guidance import FCOptions
    from trainers.fc.repair import FC2Options
    from trainers.training.recipe import get_recipe

    from eval.sae import load_sae

    for name, folder in every_recipe_trained.items():
        meta = SAEMeta.read(folder)
        assert meta.trainer == name
        if get_recipe(name).train is None:  # the shared loop logs every step
            assert meta.final_l0 > 0
            log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
            assert log[-1]["explained_variance"] > 0.0, name
        else:  # an external reference loop (SAELens): its own files, our folder schema
            assert meta.architecture == "jumprelu"
        assert load_sae(folder).W_dec.shape == (meta.d_sae, meta.d_in)
        if get_recipe(name).sparsity == "k":
            assert meta.k == 8 and meta.l0_target == 8
        else:
            assert meta.k is None
        splits = pd.read_parquet(folder / "splits.parquet")
        if FCOptions in get_recipe(name).options:  # FC guidance and its random-surgery control
            assert len(splits) > 0 and splits["slot_dead"].all(), f"{name} never split into a dead slot"
        else:
            assert splits.empty, name
        repairs = pd.read_parquet(folder / "repairs.parquet") if (folder / "repairs.parquet").is_file() else None
        if FC2Options in get_recipe(name).options:  # absorption repair and its control
            assert repairs is not None and len(repairs) > 0, f"{name} never repaired"
        elif repairs is not None:
            assert repairs.empty, name


def test_relu_recipes_revive_dead_latents(every_recipe_trained):
    """relu_l1 resamples its dead latents; fc_relu_l1 first hands them to splits, then resamples the rest."""
    log = [json.loads(line) for line in (every_recipe_trained["relu_l1"] / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["n_resampled"] > 0
    log = [json.loads(line) for line in (every_recipe_trained["fc_relu_l1"] / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["n_resampled"] + log[-1]["n_splits"] > 0


def test_a_new_recipe_is_one_file(tmp_path):
    """The example of docs/ARCHITECTURE.md: a recipe registered from outside the package trains."""
    from trainers.saes.topk import TopKSAE
    from trainers.training.config import TrainConfig
    from trainers.training.data import InMemoryActivations
    from trainers.training.export import ModelInfo
    from trainers.training.loop import train_sae
    from trainers.training.recipe import Recipe, get_recipe, recipe_names, register
    from tests.trainers_fixtures import synthetic_acts
    import torch

    def build(d_in, cfg, generator):
        return TopKSAE(d_in, cfg.d_sae, cfg.k, auxk_alpha=0.0, generator=generator)

    if "topk_no_auxk" not in recipe_names():
        register(Recipe("topk_no_auxk", "TopK without the AuxK loss", build))
    assert get_recipe("topk_no_auxk").maintain is None
    cfg = TrainConfig(trainers=["topk_no_auxk"], seeds=[0], d_sae=64, k=4, n_tokens=4096, batch_size=256,
                      reservoir_rows=256, norm_rows=1024, checkpoint_every=0, device="cpu")
    source = InMemoryActivations(torch.from_numpy(synthetic_acts(2048, 16)))
    result = train_sae(source, cfg, "topk_no_auxk", 0, tmp_path / "sae", ModelInfo("synthetic"), progress=False)
    assert result.steps == 16 and (tmp_path / "sae" / "sae_meta.json").is_file()


def test_no_file_edits_sys_path():
    """Scripts import the project as the installed package (``python -m ...`` or the editable install),
    never by pushing the checkout onto ``sys.path``."""
    for folder in ("benchmarks", "pipeline", "eval", "trainers", "cache_tools", "fc_base", "flows", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            assert "sys.path.insert" not in path.read_text() or path.name == "test_architecture.py", path
