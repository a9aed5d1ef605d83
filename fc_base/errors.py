"""The one configuration error of the project and its check helper."""
from __future__ import annotations


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field and what is allowed."""


def check(cond: bool, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(msg)
