"""Evals as plug-ins.

An eval file registers an :class:`EvalSpec`: its name, its own options dataclass (a section of
``eval.options``), and ``run(inputs, options) -> EvalOutput``. ``pipeline.evaluate`` loads the model
(once per process) and the SAE, prepares any dataset the spec ``needs``, and passes them in, so
eval modules import nothing from ``pipeline`` or ``flows``. Heavy imports (sae-bench) stay inside
``run`` so listing or validating evals stays fast. A new eval is one folder (``eval/<name>/main.py``) plus one import line in
:mod:`eval.registry`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from fc_base.options import Options, PluginRegistry

if TYPE_CHECKING:
    from eval.config import EvalConfig
    from fc_base.sae_folder import SAEMeta


EvalOptions = Options
"""Base of eval option groups (a dataclass whose ``section`` names its key in ``eval.options``)."""


class EvalInputs(NamedTuple):
    model: Any
    """The language model (TransformerLens, by official name), shared by every SAE of the run."""
    sae: Any
    """The SAE as an SAE-Bench custom SAE (eval.sae.FolderSAE), in the dtype the spec asks for."""
    meta: "SAEMeta"
    """The SAE folder's metadata (layer, hook, width, trainer)."""
    artifacts_dir: Path
    """``run_dir/eval_artifacts``: artifacts shared by the SAEs of a run (probes, activations)."""
    common: "EvalConfig"
    """The shared eval settings (dtype, device, batch size)."""
    sae_folder: Path | None = None
    """The trained SAE's folder (its tracker history, SAELens files)."""
    text_dataset: Path | None = None
    """A local parquet folder with a ``text`` column from the run's corpus, when the spec asks for one."""
    heldout: tuple[Any, Any] | None = None
    """Held-out synthetic rows ``(acts_ND, true_feature_acts_NF)`` when the spec asks for them."""


class EvalOutput(NamedTuple):
    metrics: dict[str, float]
    """Metric name -> value (one row each in results.parquet)."""
    details: dict[str, Any]
    """Anything else worth keeping beside the rows (the task JSON's ``details``)."""


@dataclass(frozen=True)
class EvalSpec:
    name: str
    """Eval name in configs and the results table (sae-bench's where it wraps one)."""
    description: str
    """One line for ``fc-sae eval --help``."""
    run: Callable[[EvalInputs, Any], EvalOutput]
    """(inputs, options) -> metrics and details."""
    options: type | None = None
    """The eval's options dataclass (an ``EvalOptions``), or None."""
    text_docs: Callable[[Any], int] | None = None
    """options -> documents of the run's corpus to write as ``inputs.text_dataset`` (None: no text)."""
    model_kind: str = "language"
    """What the eval scores against: ``language`` (a TransformerLens model) or ``synthetic`` (a
    SAELens synthetic model); SAEs of the other kind get a skipped row."""
    heldout: Callable[[Any], tuple[int, int]] | None = None
    """options -> (rows, seed) of held-out synthetic samples passed as ``inputs.heldout``."""
    sae_dtype: str = "float32"
    """Dtype the SAE is loaded in: ``float32`` or ``llm`` (eval.llm_dtype)."""
    common_settings: tuple[str, ...] = ("llm_dtype",)
    """Shared ``eval`` fields that change the result (recorded in the eval_config column)."""
    unavailable: Callable[["EvalConfig"], str | None] | None = None
    """Why the eval cannot run here (None: it can); decided in seconds, before any work."""

    def __post_init__(self) -> None:
        if self.model_kind not in ("language", "synthetic"):
            raise ValueError(f"eval {self.name}: model_kind must be language or synthetic, got {self.model_kind!r}")


EVALS = PluginRegistry("eval", "eval", "eval.registry")


def register(spec: EvalSpec) -> EvalSpec:
    return EVALS.add(spec.name, spec, (spec.options,) if spec.options is not None else ())


get_eval = EVALS.get
eval_names = EVALS.names
eval_specs = EVALS.items
option_sections = EVALS.sections
build_options = EVALS.build_options
