"""Test-wide setup: a private FC_SAE_HOME (model cache, data) per test session, set before any
fc-sae or Hugging Face import, so tests never touch the user's data or the network."""
import os
import tempfile
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="fc-sae-test-home-"))
os.environ["FC_SAE_HOME"] = str(_HOME)
os.environ.pop("FC_SAE_ONLINE", None)
os.environ["FC_SAE_USE_GLOBAL_HF_CACHE"] = "0"

import pytest  # noqa: E402

import pipeline  # noqa: E402,F401

TINY = "EleutherAI/pythia-14m"


@pytest.fixture(scope="session")
def fc_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def tiny_cfg():
    from pipeline.config import get_preset

    return get_preset("tiny")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_cfg):
    """The tiny random model registered in the session's project cache (built once)."""
    from pipeline.models import ensure_model

    return ensure_model(tiny_cfg.model.name, source=tiny_cfg.model.source)
