"""Synthetic activation models (SAELens ``SyntheticModel``) as a model source addressed by name.

A synthetic model generates activations as sparse, non-negative sums of known feature vectors (with a
feature hierarchy, mutual exclusion, low-rank correlations and per-feature firing magnitudes), so an
SAE trained on them can be scored against the ground-truth features.  Names start with ``synth/``:

- ``synth/sae-bench-16k`` — the published SynthSAEBench-16k recipe (16384 features in 768 dims);
- ``synth/4k-256``, ``synth/1k-64`` — the same recipe scaled down for CPUs (features, hidden dim and
  hierarchy roots shrunk together, so the hierarchy still covers the same ~66% of the features);
- ``synth/tiny`` — the same recipe at 128 features, for tests (builds in about a second);
- any other ``synth/<name>`` together with a JSON/YAML file of ``SyntheticModelConfig`` fields.

A model is built once (the orthogonalisation of the feature dictionary dominates: ~22 min for the 16k
recipe on 2 CPU threads) and saved under ``data_home()/synthetic/<name>/<config hash>`` with a
``provenance.json``; later calls load it.  Builds always run on the CPU because SAELens draws the
initial dictionary from a device-specific generator: a CUDA build would give a different model for the
same config hash.  The d_model of a synthetic model is its ``hidden_dim``.

:func:`sample_batches` draws activations deterministically for a seed, in calls of
:data:`SAMPLE_CALL_ROWS` rows (the fastest per-call size measured), from a private random stream, so
the global torch RNG is left as it was and the first N rows of a seed do not depend on the batch size.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:  # POSIX advisory locks keep two processes from building the same model twice.
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX platforms build without the lock
    fcntl = None  # type: ignore[assignment]

# pipeline/__init__ has imported fc_base (the environment set-up) before any module of the package,
# so sae_lens may come first here.
import sae_lens
import torch
import yaml
from sae_lens.constants import DTYPE_MAP
from sae_lens.synthetic import (
    FoldedNormalMagnitudeConfig,
    HierarchyConfig,
    LinearMagnitudeConfig,
    LowRankCorrelationConfig,
    OrthogonalizationConfig,
    SyntheticModel,
    SyntheticModelConfig,
    ZipfianFiringProbabilityConfig,
)
from sae_lens.synthetic.registry import FIRING_PROB_REGISTRY, MAGNITUDE_REGISTRY
from sae_lens.synthetic.synthetic_model import (
    SYNTHETIC_MODEL_CONFIG_FILENAME,
    SYNTHETIC_MODEL_WEIGHTS_FILENAME,
)

import fc_base
from fc_base.errors import ConfigError

__all__ = [
    "PREFIX",
    "PROVENANCE_FILE",
    "SAMPLE_CALL_ROWS",
    "config_hash",
    "ensure_synthetic_model",
    "estimate_build_seconds",
    "is_synthetic_name",
    "load_synthetic_model",
    "sample_batches",
    "synthetic_config",
    "synthetic_d_model",
    "synthetic_model_dir",
    "synthetic_model_names",
    "synthetic_provenance",
]

PREFIX = "synth/"
PROVENANCE_FILE = "provenance.json"
# Rows per SyntheticModel.sample_with_features call.  Per-call cost grows faster than linearly with
# the batch (dense [batch, num_features] intermediates), so larger batches are assembled from calls of
# this size; 1024 was the fastest per-call size measured.
SAMPLE_CALL_ROWS = 1024

SYNTHETIC_STATEMENT = (
    "Synthetic data: every activation is a sparse sum of random, known feature vectors drawn by "
    "SAELens' SyntheticModel; no language model, text or real network activations are involved."
)

# Counts builds in this process; tests use it to see that a second ensure reuses the saved model.
_builds_in_process = 0


# ---- named configs --------------------------------------------------------------------------------

def _synth_sae_bench_recipe(
    num_features: int, hidden_dim: int, total_root_nodes: int, orthogonalization_steps: int = 100
) -> SyntheticModelConfig:
    """The SynthSAEBench recipe at a given size; everything except the size arguments is as published.

    Field mapping onto ``SyntheticModelConfig`` (SAELens names differ from the prose description in a
    few places): the hierarchy's "min_depth" is ``mutually_exclusive_min_depth``; the low-rank
    correlation "scale" is ``LowRankCorrelationConfig.correlation_scale``; the "mean/std magnitudes"
    are ``mean_firing_magnitudes`` / ``std_firing_magnitudes``; "bias 0.5" is ``bias=0.5`` (the norm
    of the random bias vector).  ``OrthogonalizationConfig.chunk_size`` and
    ``LowRankCorrelationConfig.seed`` keep their SAELens defaults (1024, None): the chunk size only
    bounds memory, and SyntheticModel derives the correlation seed from ``seed`` (seed + 4) and
    ignores the correlation config's own seed.
    """
    return SyntheticModelConfig(
        num_features=num_features,
        hidden_dim=hidden_dim,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=0.5, max_prob=0.4, min_prob=5e-4),
        hierarchy=HierarchyConfig(
            total_root_nodes=total_root_nodes,
            branching_factor=4,
            max_depth=3,
            mutually_exclusive_portion=1.0,
            mutually_exclusive_min_depth=0,
            compensate_probabilities=True,
            scale_children_by_parent=True,
        ),
        orthogonalization=OrthogonalizationConfig(num_steps=orthogonalization_steps, lr=3e-4),
        correlation=LowRankCorrelationConfig(rank=25, correlation_scale=0.1),
        mean_firing_magnitudes=LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
        bias=0.5,
        dtype="float32",
        seed=42,
    )


# Each tree of the recipe (branching 4, depth 3) uses 1 + 4 + 16 + 64 = 85 features, so 128 roots
# cover 10880 of 16384 features (66%).  The smaller variants keep that share: 32 roots of 4096, 8 of
# 1024 and 1 of 128 (4 roots would need 340 features and leave the tiny model truncated trees and no
# free features).  Builders, not instances, because the configs are mutable dataclasses.
_NAMED: dict[str, Callable[[], SyntheticModelConfig]] = {
    "synth/sae-bench-16k": lambda: _synth_sae_bench_recipe(16384, 768, 128),
    "synth/4k-256": lambda: _synth_sae_bench_recipe(4096, 256, 32),
    "synth/1k-64": lambda: _synth_sae_bench_recipe(1024, 64, 8),
    "synth/tiny": lambda: _synth_sae_bench_recipe(128, 32, 1, orthogonalization_steps=10),
}


def is_synthetic_name(name: str) -> bool:
    """Whether ``name`` addresses a synthetic model (it starts with ``synth/``)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def synthetic_model_names() -> list[str]:
    """The built-in synthetic model names."""
    return list(_NAMED)


# ---- custom configs from a file -------------------------------------------------------------------

def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _check_keys(d: dict[str, Any], allowed: list[str], where: str) -> None:
    for key in d:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown field {key!r}; allowed: {', '.join(allowed)}")


def _check_mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(value).__name__}")
    return value


def _check_registered(d: dict[str, Any], registry: dict[str, type], where: str) -> None:
    """A nested config chosen by ``generator_name`` (firing probabilities, magnitudes)."""
    gen = d.get("generator_name")
    if gen not in registry:
        raise ConfigError(
            f"{where}.generator_name: {gen!r} is not one of {', '.join(sorted(registry))}"
        )
    _check_keys(d, ["generator_name", *_field_names(registry[gen])], where)


def _check_magnitude(value: Any, where: str) -> None:
    if isinstance(value, dict):
        _check_registered(value, MAGNITUDE_REGISTRY, where)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number or a mapping with generator_name, got {value!r}")


def _config_from_dict(d: Any, where: str) -> SyntheticModelConfig:
    """Validate a dict of SyntheticModelConfig fields and build the config; every problem is one
    ConfigError line naming the field and what is allowed."""
    d = dict(_check_mapping(d, where))
    _check_keys(d, _field_names(SyntheticModelConfig), where)
    for key in ("num_features", "hidden_dim"):
        value = d.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}.{key}: required, a positive integer (got {value!r})")
    # A fixed seed makes the saved model reproducible from its provenance alone.
    if isinstance(d.get("seed"), bool) or not isinstance(d.get("seed"), int):
        raise ConfigError(f"{where}.seed: required, an integer (got {d.get('seed')!r})")
    # SAELens' from_dict needs firing_probability; the dataclass default is a Zipfian distribution.
    d.setdefault("firing_probability", ZipfianFiringProbabilityConfig().to_dict())
    _check_registered(
        _check_mapping(d["firing_probability"], f"{where}.firing_probability"),
        FIRING_PROB_REGISTRY,
        f"{where}.firing_probability",
    )
    for key, cls in (
        ("hierarchy", HierarchyConfig),
        ("orthogonalization", OrthogonalizationConfig),
        ("correlation", LowRankCorrelationConfig),
    ):
        if d.get(key) is not None:
            _check_keys(_check_mapping(d[key], f"{where}.{key}"), _field_names(cls), f"{where}.{key}")
    for key in ("mean_firing_magnitudes", "std_firing_magnitudes"):
        if key in d:
            _check_magnitude(d[key], f"{where}.{key}")
    if "bias" in d and not isinstance(d["bias"], (bool, int, float)):
        raise ConfigError(f"{where}.bias: expected true/false or a number (the bias norm), got {d['bias']!r}")
    if "dtype" in d and d["dtype"] not in DTYPE_MAP:
        raise ConfigError(f"{where}.dtype: {d['dtype']!r} is not one of {', '.join(DTYPE_MAP)}")
    try:
        return SyntheticModelConfig.from_dict(d)
    except (TypeError, ValueError) as exc:  # SAELens' own range checks (__post_init__)
        raise ConfigError(f"{where}: {' '.join(str(exc).split())}") from None


def _read_config_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"synthetic config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text)
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"synthetic config file {str(path)!r} does not parse: "
                          f"{' '.join(str(exc).split())}") from None
    raise ConfigError(f"synthetic config file {str(path)!r}: the name must end in .json, .yaml or .yml")


def synthetic_config(name: str, config_file: str | Path | None = None) -> SyntheticModelConfig:
    """The SyntheticModelConfig for ``name``: a built-in name, or a new ``synth/<name>`` defined by
    ``config_file`` (JSON or YAML of SyntheticModelConfig fields, nested configs as mappings, the
    firing-probability and magnitude mappings with their SAELens ``generator_name``)."""
    if not is_synthetic_name(name) or not name[len(PREFIX):].strip("/"):
        raise ConfigError(f"synthetic model name {name!r} must look like 'synth/<name>'")
    if config_file is None:
        if name not in _NAMED:
            raise ConfigError(
                f"unknown synthetic model {name!r}; known: {', '.join(_NAMED)} "
                "(or give a config file to define a new one)"
            )
        return _NAMED[name]()
    if name in _NAMED:
        # One name, one model: a file may not silently redefine a published recipe.
        raise ConfigError(
            f"synthetic model {name!r} is built in and cannot be redefined by {str(config_file)!r}; "
            "choose another 'synth/<name>' for the custom model"
        )
    path = Path(config_file)
    return _config_from_dict(_read_config_file(path), f"synthetic config {str(path)!r}")


def synthetic_d_model(name: str, config_file: str | Path | None = None) -> int:
    """The activation width of a synthetic model (its ``hidden_dim``), without building it."""
    return synthetic_config(name, config_file).hidden_dim


def config_hash(cfg: SyntheticModelConfig) -> str:
    """A short content hash of the full config: the folder a build is saved under."""
    canonical = json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---- build-time estimate --------------------------------------------------------------------------

# Seconds per orthogonalisation step against num_features**2 * hidden_dim, measured on this project's
# idle 2-thread CPU (torch 2.x, float32): 1024x64, 4096x256 and 16384x768.  Interpolated log-log; the
# orthogonalisation is quadratic in the feature count and dominates the build.  Whole builds on the
# same machine while other jobs shared it took 2-4x longer (1k-64: 13 s, 4k-256: 151 s).
_STEP_SECONDS_2_THREADS = ((1024**2 * 64, 0.022), (4096**2 * 256, 0.65), (16384**2 * 768, 13.4))


def estimate_build_seconds(cfg: SyntheticModelConfig) -> float:
    """Rough CPU build time: orthogonalisation steps times the measured cost per step (scaled from 2
    threads to this process's torch thread count), plus a second for the rest."""
    steps = cfg.orthogonalization.num_steps if cfg.orthogonalization is not None else 0
    work = float(cfg.num_features) ** 2 * cfg.hidden_dim
    pts = [(math.log(w), math.log(s)) for w, s in _STEP_SECONDS_2_THREADS]
    x = math.log(work)
    # Pick the segment containing x (the end segments extrapolate).
    i = 0 if x <= pts[1][0] else 1
    (x0, y0), (x1, y1) = pts[i], pts[i + 1]
    per_step = math.exp(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
    per_step *= 2.0 / max(1, torch.get_num_threads())
    return steps * per_step + 1.0


def _fmt_seconds(s: float) -> str:
    if s < 10:
        return f"{s:.1f} s"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


# ---- build, save, load ----------------------------------------------------------------------------

def _safe_name(name: str) -> str:
    # "synth/a/b" -> "a--b"; other characters outside [A-Za-z0-9._-] become "_".
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name[len(PREFIX):].strip("/").replace("/", "--")) or "_"


def synthetic_model_dir(name: str, config_file: str | Path | None = None) -> Path:
    """Where the model for ``name`` is (or will be) saved: ``data_home()/synthetic/<name>/<hash>``."""
    cfg = synthetic_config(name, config_file)
    return fc_base.data_home() / "synthetic" / _safe_name(name) / config_hash(cfg)


def _is_complete(folder: Path) -> bool:
    # provenance.json is written last, and the folder only appears under its final name by rename.
    return all((folder / f).is_file() for f in (
        PROVENANCE_FILE, SYNTHETIC_MODEL_CONFIG_FILENAME, SYNTHETIC_MODEL_WEIGHTS_FILENAME))


class _BuildLock:
    """An exclusive advisory lock per model folder, so concurrent callers wait for one build."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def __enter__(self) -> None:
        if fcntl is not None:
            self._fh = open(self.path, "a")
            fcntl.flock(self._fh, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def _log(msg: str) -> None:
    print(f"[fc-sae synthetic] {msg}", file=sys.stderr, flush=True)


def _build(name: str, cfg: SyntheticModelConfig, config_file: str | Path | None, final: Path) -> None:
    """Build into a temporary sibling folder and rename it to ``final``; the caller holds the lock."""
    global _builds_in_process
    parent = final.parent
    # Temporary folders of this hash can only be left by crashed builders (live ones hold the lock).
    for stale in parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    estimate = estimate_build_seconds(cfg)
    steps = cfg.orthogonalization.num_steps if cfg.orthogonalization is not None else 0
    _log(
        f"building {name} ({cfg.num_features} features x {cfg.hidden_dim} dims, {steps} "
        f"orthogonalisation steps) on the CPU: rough estimate {_fmt_seconds(estimate)} on an idle "
        f"CPU with {torch.get_num_threads()} torch threads, several times longer when the cores are "
        f"shared (the cost grows with features^2 x dims); saved once to {final}"
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=parent))
    try:
        start = time.perf_counter()
        model = SyntheticModel(cfg, device="cpu")
        model.save(tmp)
        seconds = time.perf_counter() - start
        provenance = {
            "name": name,
            "synthetic": True,
            "statement": SYNTHETIC_STATEMENT,
            "sae_lens_version": sae_lens.__version__,
            "torch_version": torch.__version__,
            "config": cfg.to_dict(),
            "config_hash": final.name,
            "config_file": str(Path(config_file).resolve()) if config_file is not None else None,
            "seed": cfg.seed,
            "build_seconds": round(seconds, 3),
            "build_device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        # mkdtemp (and the weights writer) create owner-only modes; the data directory is shared.
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        _fsync_tree(tmp)
        os.rename(tmp, final)
        _builds_in_process += 1
        _log(f"built {name} in {_fmt_seconds(seconds)}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_synthetic_model(name: str, config_file: str | Path | None = None) -> Path:
    """The saved model folder for ``name``, building it first if no complete one exists.

    The build goes to a temporary folder renamed into place when complete, under a per-model lock:
    a concurrent caller waits and then reuses the result, and a crashed build leaves only a temporary
    folder that the next build removes."""
    cfg = synthetic_config(name, config_file)
    final = fc_base.data_home() / "synthetic" / _safe_name(name) / config_hash(cfg)
    if _is_complete(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _BuildLock(final.parent / f".{final.name}.lock"):
        if _is_complete(final):  # another process finished while we waited
            return final
        if final.exists():
            # Not written by this module (a completed rename is never partial): keep it for
            # inspection, out of the way.
            aside = final.with_name(f".broken-{final.name}-{int(time.time())}")
            _log(f"{final} is incomplete; moved to {aside.name} and rebuilding")
            final.rename(aside)
        _build(name, cfg, config_file, final)
    return final


def _check_saved_config(folder: Path, cfg: SyntheticModelConfig) -> dict[str, Any]:
    provenance = json.loads((folder / PROVENANCE_FILE).read_text())
    want = json.dumps(cfg.to_dict(), sort_keys=True)
    have = json.dumps(provenance.get("config"), sort_keys=True)
    if want != have:  # a hash collision or a hand-edited folder; never serve the wrong model
        raise RuntimeError(f"saved synthetic model {folder} does not match its config; delete the folder")
    return provenance


def load_synthetic_model(
    name: str, config_file: str | Path | None = None, device: str = "cpu"
) -> SyntheticModel:
    """The synthetic model for ``name`` on ``device`` (built and saved first if needed)."""
    folder = ensure_synthetic_model(name, config_file)
    _check_saved_config(folder, synthetic_config(name, config_file))
    return SyntheticModel.load_from_disk(folder, device=device)


def synthetic_provenance(name: str, config_file: str | Path | None = None) -> dict[str, Any]:
    """The provenance record of ``name`` (SAELens version, full config, seed, build time, a statement
    that the data are synthetic), building the model first if needed."""
    folder = ensure_synthetic_model(name, config_file)
    return _check_saved_config(folder, synthetic_config(name, config_file))


# ---- deterministic sampling -----------------------------------------------------------------------

class _PrivateRng:
    """A torch random stream of its own: SAELens samples from the global generators, so each call
    swaps this stream's state in, runs, saves the advanced state, and restores the global state."""

    def __init__(self, device: str | torch.device, seed: int) -> None:
        dev = torch.device(device)
        self.cuda_index: int | None = None
        if dev.type == "cuda":
            self.cuda_index = dev.index if dev.index is not None else torch.cuda.current_device()
        self.seed = seed
        self.cpu_state: torch.Tensor | None = None
        self.cuda_state: torch.Tensor | None = None

    def run(self, fn: Callable[[], Any]) -> Any:
        devices = [self.cuda_index] if self.cuda_index is not None else []
        with torch.random.fork_rng(devices=devices):
            if self.cpu_state is None:
                # Only the CPU generator (and this CUDA device): torch.manual_seed would also
                # reseed other devices, which fork_rng does not restore.
                torch.random.default_generator.manual_seed(self.seed)
                if self.cuda_index is not None:
                    with torch.cuda.device(self.cuda_index):
                        torch.cuda.manual_seed(self.seed)
            else:
                torch.set_rng_state(self.cpu_state)
                if self.cuda_index is not None:
                    torch.cuda.set_rng_state(self.cuda_state, self.cuda_index)
            out = fn()
            self.cpu_state = torch.get_rng_state()
            if self.cuda_index is not None:
                self.cuda_state = torch.cuda.get_rng_state(self.cuda_index)
        return out


def sample_batches(
    model: SyntheticModel, n_rows: int, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(acts_BD, features_BF)`` batches totalling ``n_rows`` rows (the last may be short).

    ``acts_BD`` are float32 activations ``[batch, hidden_dim]``; ``features_BF`` the dense ground-truth
    feature activations ``[batch, num_features]`` that produced them.  The rows are a fixed stream per
    ``seed``, drawn in calls of :data:`SAMPLE_CALL_ROWS` rows: the same seed gives identical tensors,
    the first N rows do not depend on ``batch_size`` or ``n_rows``, and the global RNG state is left
    untouched."""
    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 0:
        raise ConfigError(f"sample_batches: n_rows must be a non-negative integer, got {n_rows!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"sample_batches: batch_size must be a positive integer, got {batch_size!r}")
    rng = _PrivateRng(model.device, seed)

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        acts, feats = rng.run(lambda: model.sample_with_features(SAMPLE_CALL_ROWS))
        if feats.is_sparse:
            feats = feats.to_dense()
        return acts.to(torch.float32), feats

    buf_a: list[torch.Tensor] = []
    buf_f: list[torch.Tensor] = []
    buffered = 0
    emitted = 0
    while emitted < n_rows:
        want = min(batch_size, n_rows - emitted)
        while buffered < want:
            a, f = draw()
            buf_a.append(a)
            buf_f.append(f)
            buffered += a.shape[0]
        acts = buf_a[0] if len(buf_a) == 1 else torch.cat(buf_a)
        feats = buf_f[0] if len(buf_f) == 1 else torch.cat(buf_f)
        if buffered > want:
            buf_a, buf_f = [acts[want:]], [feats[want:]]
            acts, feats = acts[:want], feats[:want]
        else:
            buf_a, buf_f = [], []
        buffered -= want
        emitted += want
        yield acts, feats
