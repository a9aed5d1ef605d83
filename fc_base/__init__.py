"""fc_base: the leaf every fc-sae package may import (and which imports none of them).

Importing it points the Hugging Face caches at the project's own data directory and keeps the Hub
offline unless ``FC_SAE_ONLINE=1``: nothing reaches the network unless a config asks for a Hub model
or dataset *and* the user allowed it. It must run before transformers/huggingface_hub are imported,
because they read these variables at import time; every fc-sae package imports it first.

- :mod:`fc_base.errors` — one ``ConfigError`` and its ``check`` helper;
- :mod:`fc_base.torch_utils` — dtype names and device resolution;
- :mod:`fc_base.io` — atomic file writes (temp file, fsync, rename);
- :mod:`fc_base.sae_folder` — the trained-SAE folder schema (file names, ``sae_meta.json``);
- :mod:`fc_base.cli` — the one-error-line runner every command line uses.
"""
from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"


def data_home() -> Path:
    """Project data directory: $FC_SAE_HOME, else <repo>/data."""
    return Path(os.environ.get("FC_SAE_HOME") or Path(__file__).resolve().parents[1] / "data")


def hub_cache() -> Path:
    return data_home() / "hf" / "hub"


def online() -> bool:
    return os.environ.get("FC_SAE_ONLINE", "") == "1"


def _configure_environment() -> None:
    if os.environ.get("FC_SAE_USE_GLOBAL_HF_CACHE", "") != "1":
        os.environ["HF_HOME"] = str(data_home() / "hf")
        os.environ["HF_HUB_CACHE"] = str(hub_cache())
        os.environ["HF_DATASETS_CACHE"] = str(data_home() / "hf" / "datasets")
    flag = "0" if online() else "1"
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = flag
    # No telemetry leaves the machine.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


_configure_environment()
