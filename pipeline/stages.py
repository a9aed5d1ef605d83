"""The whole pipeline in-process: harvest -> train -> evaluate (+ aggregate) -> report.

The Prefect flow in ``flows/`` runs the same stage functions with orchestration; this is the plain
path used by ``fc-sae run`` and by tests.
"""
from __future__ import annotations

from pathlib import Path

from fc_base.progress import StageProgress, stage_progress
from pipeline.config import RunConfig
from pipeline.rundir import prepare_run_dir


def run_all(cfg: RunConfig, run_dir: str | Path) -> Path:
    from pipeline.evaluate import evaluate
    from pipeline.harvest import harvest
    from pipeline.analysis.report import report
    from pipeline.train import train

    run_dir = Path(run_dir)
    cfg = prepare_run_dir(run_dir, cfg)
    harvest(cfg, run_dir)
    train(cfg, run_dir)
    evaluate(cfg, run_dir)
    with report_progress(run_dir, steps=1) as bar:
        path = report(cfg, run_dir)
        bar.update(1)
    return path


def report_progress(run_dir: str | Path, steps: int) -> StageProgress:
    """The report stage's progress record: ``steps`` of aggregating and writing the report."""
    return stage_progress("report", steps, "step", run_dir=run_dir, label="report")
