"""Option groups: small dataclasses that plug-ins (training recipes, evals) register under a
section name and that a config holds as ``<prefix>.options.<section>``."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from fc_base.errors import ConfigError


class Options:
    """Base of option groups: a dataclass whose ``section`` names its key in ``options``."""

    section: ClassVar[str] = ""


def add_section(registry: dict[str, type], cls: type) -> type:
    """Record ``cls`` under its section (idempotent for the same class)."""
    if not (dataclasses.is_dataclass(cls) and issubclass(cls, Options) and cls.section):
        raise TypeError(f"{cls.__name__} must be an Options dataclass with a section name")
    known = registry.setdefault(cls.section, cls)
    if known is not cls:
        raise ValueError(f"option section {cls.section!r} is registered twice ({known.__name__}, {cls.__name__})")
    return cls


def build_section(prefix: str, registry: dict[str, type], section: str, values: Any) -> Any:
    """The option group ``section`` from its config entry, with one clear error for a bad field."""
    cls = registry.get(section)
    if cls is None:
        raise ConfigError(f"unknown config field {prefix}.options.{section} (allowed: {', '.join(registry)})")
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix}.options.{section} must be a mapping, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown config field {prefix}.options.{section}.{unknown[0]} (allowed: {', '.join(names)})")
    return cls(**values)


def resolve_sections(prefix: str, registry: dict[str, type], given: Any) -> dict[str, dict]:
    """Every registered section, filled with defaults and validated, so saved configs show every knob."""
    if not isinstance(given, dict):
        raise ConfigError(f"{prefix}.options must be a mapping of option sections")
    for name in given:
        build_section(prefix, registry, name, given[name])  # unknown sections and fields fail here
    return {name: dataclasses.asdict(build_section(prefix, registry, name, given.get(name, {}))) for name in registry}


def upgrade_legacy(data: dict[str, Any], legacy: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Move flat fields of earlier config files (``legacy``: old name -> (section, field)) into
    ``options``."""
    if not any(key in data for key in legacy):
        return data
    data = dict(data)
    options = {k: dict(v) for k, v in (data.get("options") or {}).items()}
    for key, (section, name) in legacy.items():
        if key in data:
            options.setdefault(section, {})[name] = data.pop(key)
    data["options"] = options
    return data


class PluginRegistry:
    """Named plug-ins (training recipes, evals) and the option groups they read.

    ``loader`` is the module whose import registers every built-in plug-in; it is imported on first
    lookup, so defining a plug-in never needs the registry to be complete."""

    def __init__(self, kind: str, prefix: str, loader: str) -> None:
        self.kind, self.prefix, self.loader = kind, prefix, loader
        self._items: dict[str, Any] = {}
        self._sections: dict[str, type] = {}

    def add(self, name: str, item: Any, options: tuple[type, ...] = ()) -> Any:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        for cls in options:
            add_section(self._sections, cls)
        self._items[name] = item
        return item

    def _load(self) -> None:
        import importlib

        importlib.import_module(self.loader)

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r} (allowed: {', '.join(self._items)})")
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return list(self._items)

    def items(self) -> list[Any]:
        self._load()
        return list(self._items.values())

    def sections(self) -> dict[str, type]:
        self._load()
        return dict(self._sections)

    def build_options(self, section: str, values: Any) -> Any:
        """The option group ``section`` from its ``<prefix>.options`` entry."""
        return build_section(self.prefix, self.sections(), section, values)
