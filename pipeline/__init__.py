"""fc-sae pipeline: configs, model and corpus provisioning, the stage functions and the CLI.

The offline Hugging Face environment is set by :mod:`fc_base` (imported first here); its helpers are
re-exported for callers that know them from this package.
"""
from __future__ import annotations

from fc_base import __version__, data_home, hub_cache, online  # noqa: F401  (environment first)
