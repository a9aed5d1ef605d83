"""The whole pipeline in-process: harvest -> train -> evaluate (+ aggregate) -> report.

The Prefect flow in ``flows/`` runs the same stage functions with orchestration; this is the plain
path used by ``fc-sae run`` and by tests.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import RunConfig
from pipeline.rundir import prepare_run_dir


def run_all(cfg: RunConfig, run_dir: str | Path) -> Path:
    from pipeline.evaluate import evaluate
    from pipeline.harvest import harvest
    from pipeline.report import report
    from pipeline.train import train

    run_dir = Path(run_dir)
    cfg = prepare_run_dir(run_dir, cfg)
    harvest(cfg, run_dir)
    train(cfg, run_dir)
    evaluate(cfg, run_dir)
    return report(cfg, run_dir)
