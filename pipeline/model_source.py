"""Where a run's activations come from: a language model read at a hook, or a synthetic model sampled
with its ground truth. Every stage asks the run's :class:`ModelSource` instead of branching on the
model's kind: the harvest (identity, shapes, store provenance, the group producer), training (the
metadata an SAE folder records) and evaluation (the settings that identify a result).

:func:`model_source` is the one place that looks at ``cfg.model.name``'s kind.
"""
from __future__ import annotations

import functools
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import pipeline
from pipeline.config import HOOK_RESID_POST, RunConfig
from pipeline.harvest_groups import GroupHarvester, HarvestError, HarvestPlan, make_plan


class ModelSource(Protocol):
    kind: str
    """``language`` or ``synthetic`` (the kind an eval may require: ``EvalSpec.model_kind``)."""
    unit: str
    """What one cached row is, for progress lines: ``tok`` or ``row``."""

    def identity_content(self) -> dict[str, Any]:
        """What, beyond the model/corpus/harvest configs, determines the cached rows."""

    def hook_site(self):
        """The module the hook reads (a ``HookSite``; None without one); raises HarvestError when
        the model has no such module."""

    def d_model(self) -> int:
        """Width of a cached row."""

    def plan(self) -> tuple[Any, HarvestPlan]:
        """(tokenizer or None, the harvest plan)."""

    def store_attrs(self, plan: HarvestPlan, tokenizer: Any, site: Any) -> dict[str, Any]:
        """The provenance attributes written into the activation store."""

    def group_harvester(self, root: Path, tokenizer: Any = None):
        """The producer that writes whole groups of shards (a context manager with ``run_group``)."""

    def sae_metadata(self) -> dict[str, Any]:
        """Extra metadata an SAE trained on this source records (``cfg.json``'s metadata)."""

    def ensure(self) -> dict[str, Any]:
        """Make the model available offline (built or registered once) and say where it is."""

    def eval_settings(self) -> dict[str, Any]:
        """Settings that identify an eval result of this source beyond the eval's options."""


def model_source(cfg: RunConfig) -> ModelSource:
    """The run's model source."""
    return SyntheticSource(cfg) if cfg.model.is_synthetic else LanguageModelSource(cfg)


def _created_at() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class LanguageModelSource:
    """A causal language model (Hugging Face) over a text corpus, stopped after the hooked module."""

    kind, unit = "language", "tok"

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def identity_content(self) -> dict[str, Any]:
        if self.cfg.model.hook.endswith("." + HOOK_RESID_POST):
            return {}
        # Stores of attention/MLP hooks written before these were read from their own modules held
        # the layer output under the hook's name; this marker keeps such a store from matching.
        return {"hook_read_from": "submodule output"}

    @functools.cached_property
    def _model_config(self):
        """The model's text config (read once per source: the hook site and the width both need it)."""
        from transformers import AutoConfig

        from pipeline.models import ensure_model
        from pipeline.truncated_forward import text_config

        snap = ensure_model(self.cfg.model.name, source=self.cfg.model.source)
        return text_config(AutoConfig.from_pretrained(str(snap) if snap else self.cfg.model.name))

    def hook_site(self):
        from pipeline.truncated_forward import hook_site

        try:
            return hook_site(self._model_config, self.cfg.model.hook)
        except ValueError as e:
            raise HarvestError(f"{self.cfg.model.name}: {e}") from None

    def d_model(self) -> int:
        return int(self._model_config.hidden_size)

    def plan(self) -> tuple[Any, HarvestPlan]:
        from pipeline.models import load_tokenizer

        tokenizer = load_tokenizer(self.cfg.model.name, source=self.cfg.model.source)
        return tokenizer, make_plan(self.cfg, tokenizer)

    def store_attrs(self, plan: HarvestPlan, tokenizer: Any, site: Any) -> dict[str, Any]:
        from pipeline.models import model_provenance

        cfg = self.cfg
        return {
            "model": {"name": cfg.model.name, "source": cfg.model.source, "dtype": cfg.model.dtype,
                      "provenance": model_provenance(cfg.model.name, source=cfg.model.source)},
            "layer": cfg.model.layer,
            "hook_name": cfg.model.hook,
            "hook_module": f"output of decoder {site.describe()}",
            "context_length": cfg.corpus.context_length,
            "tokenizer": {"name": cfg.model.name, "class": type(tokenizer).__name__,
                          "bos_token_id": tokenizer.bos_token_id, "vocab_size": len(tokenizer)},
            "dataset": {"source": cfg.corpus.source, "split": cfg.corpus.split,
                        "revision": cfg.corpus.revision, "text_field": cfg.corpus.text_field},
            "seed": cfg.corpus.seed,
            "dtype": cfg.harvest.store_dtype,
            "rows_per_window": plan.rows_per_window,
            "bos_excluded": plan.rows_per_window < cfg.corpus.context_length,
            "project_version": pipeline.__version__,
            "harvest_config": asdict(cfg.harvest),
            "corpus_config": asdict(cfg.corpus),
            "created_at": _created_at(),
        }

    def group_harvester(self, root: Path, tokenizer: Any = None) -> GroupHarvester:
        return GroupHarvester(self.cfg, root, tokenizer=tokenizer)

    def sae_metadata(self) -> dict[str, Any]:
        return {"context_size": self.cfg.corpus.context_length, "dataset_path": self.cfg.corpus.source}

    def ensure(self) -> dict[str, Any]:
        from pipeline.models import ensure_model, model_provenance

        snap = ensure_model(self.cfg.model.name, source=self.cfg.model.source)
        return {"snapshot": str(snap) if snap else None, "provenance": model_provenance(self.cfg.model.name)}

    def eval_settings(self) -> dict[str, Any]:
        return {}


class SyntheticSource:
    """A synthetic model (``synth/<name>``): rows drawn with their true features; no tokens, no hook."""

    kind, unit = "synthetic", "row"

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def _config_file(self) -> str | None:
        return self.cfg.model.synthetic_config or None

    def config_hash(self) -> str:
        """The synthetic model's config hash: the file's content, not its path, defines the rows."""
        from pipeline.synthetic_models import config_hash, synthetic_config

        return config_hash(synthetic_config(self.cfg.model.name, self._config_file()))

    def identity_content(self) -> dict[str, Any]:
        return {"synthetic": self.config_hash()}

    def hook_site(self):
        return None

    def d_model(self) -> int:
        from pipeline.synthetic_models import synthetic_d_model

        return synthetic_d_model(self.cfg.model.name, self._config_file())

    def plan(self) -> tuple[Any, HarvestPlan]:
        from pipeline.synthetic_harvest import synthetic_plan

        return None, synthetic_plan(self.cfg)

    def store_attrs(self, plan: HarvestPlan, tokenizer: Any, site: Any) -> dict[str, Any]:
        from pipeline.synthetic_models import synthetic_provenance

        cfg = self.cfg
        return {
            "model": {"name": cfg.model.name, "source": "synthetic", "synthetic_config_hash": self.config_hash(),
                      "provenance": synthetic_provenance(cfg.model.name, self._config_file())},
            "layer": cfg.model.layer,
            "hook_name": cfg.model.hook,
            "seed": cfg.corpus.seed,
            "dtype": cfg.harvest.store_dtype,
            "project_version": pipeline.__version__,
            "harvest_config": asdict(cfg.harvest),
            "created_at": _created_at(),
        }

    def group_harvester(self, root: Path, tokenizer: Any = None):
        from pipeline.synthetic_harvest import SyntheticGroupHarvester

        return SyntheticGroupHarvester(self.cfg, root)

    def sae_metadata(self) -> dict[str, Any]:
        return {"dataset_path": "synthetic", "synthetic_config_hash": self.config_hash()}

    def ensure(self) -> dict[str, Any]:
        from pipeline.synthetic_models import ensure_synthetic_model, synthetic_provenance

        folder = ensure_synthetic_model(self.cfg.model.name, self._config_file())
        return {"folder": str(folder), "provenance": synthetic_provenance(self.cfg.model.name, self._config_file())}

    def eval_settings(self) -> dict[str, Any]:
        return {"synthetic_config_hash": self.config_hash()}
