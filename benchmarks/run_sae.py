"""What the absorption benchmarks share: one trained SAE of a run, with the run's config and the
language model its evals use (``--run-dir`` and ``--sae`` on the command line)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NamedTuple


class RunSAE(NamedTuple):
    run_dir: Path
    cfg: Any
    """The run's RunConfig (config.json)."""
    meta: Any
    """The SAE's SAEMeta."""
    model: Any
    """The hooked language model, as the run's evals load it."""
    sae: Any
    """The SAE as an SAE-Bench custom SAE, on CPU."""


def add_run_sae_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--sae", required=True, help="SAE folder name under RUN_DIR/saes")


def load_run_sae(args: argparse.Namespace) -> RunSAE:
    """The run and SAE named by ``--run-dir`` and ``--sae``; one error line if the run has no config."""
    from eval.sae import load_sae
    from fc_base.sae_folder import SAEMeta
    from pipeline.evaluate import hooked_model
    from pipeline.rundir import load_run_config

    run_dir = Path(args.run_dir)
    cfg = load_run_config(run_dir)
    if cfg is None:
        raise SystemExit(f"error: {run_dir} has no config.json: run the pipeline first")
    folder = run_dir / "saes" / args.sae
    meta = SAEMeta.read(folder)
    return RunSAE(run_dir, cfg, meta, hooked_model(meta.model_name, meta.model_source, cfg), load_sae(folder))
