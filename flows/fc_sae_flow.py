"""The Prefect flow ``fc-sae``: a thin orchestration layer over the plain stage functions.

harvest -> train (one task per SAE) -> evaluate (one task per SAE x eval) -> aggregate -> report.
Stages skip work that is complete on disk, so Prefect's cache is never trusted alone: a re-run after
deleting files redoes exactly what is missing.  ``stages="eval"`` re-runs only evaluation,
aggregation and the report against the SAEs already in the run directory.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, \
    update_progress_artifact
from prefect.task_runners import ThreadPoolTaskRunner

import pipeline  # noqa: F401  (environment first)
from pipeline.config import RunConfig, resolve_config
from pipeline.rundir import load_run_config, prepare_run_dir

STAGES = ("full", "eval")


def _max_workers() -> int:
    # Evals and training each use every core through torch; running them side by side on a small
    # machine only adds contention. Raise it on machines with GPUs or many cores.
    return int(os.environ.get("FC_SAE_MAX_WORKERS", "1"))


@task(name="harvest", retries=0)
def harvest_task(cfg: RunConfig, run_dir: Path) -> str:
    from pipeline.harvest import harvest

    return str(harvest(cfg, run_dir))


@task(name="train-sae", task_run_name="train-{trainer}-{point}-s{seed}")
def train_task(cfg: RunConfig, run_dir: Path, trainer: str, seed: int, point: str = "") -> list[str]:
    from pipeline.train import train

    return [str(p) for p in train(cfg, run_dir, trainer=trainer, seed=seed, point=point)]


@task(name="eval-sae", task_run_name="eval-{eval_name}-{sae}")
def eval_task(cfg: RunConfig, run_dir: Path, sae: str, eval_name: str) -> str:
    from pipeline.evaluate import run_eval_task

    return str(run_eval_task(cfg, run_dir, sae, eval_name))


@task(name="aggregate")
def aggregate_task(cfg: RunConfig, run_dir: Path) -> str:
    from pipeline.evaluate import aggregate

    return str(aggregate(cfg, run_dir))


@task(name="report")
def report_task(cfg: RunConfig, run_dir: Path) -> str:
    from pipeline.analysis.report import report

    return str(report(cfg, run_dir))


def _resolve(preset: str | None, run_dir: Path, config_file: str | None, stages: str) -> RunConfig:
    if stages == "eval":
        saved = load_run_config(run_dir)
        if saved is None:
            raise ValueError(f"{run_dir} has no config.json: run the full pipeline first")
        return saved
    return prepare_run_dir(run_dir, resolve_config(preset, config_file))


@flow(name="fc-sae", task_runner=ThreadPoolTaskRunner(max_workers=_max_workers()),
      log_prints=True, persist_result=False)
def fc_sae(preset: str = "demo", run_dir: str = "runs/demo", stages: str = "full",
           config_file: str | None = None) -> str:
    """Run the fc-sae experiment (``stages="full"``) or only its evaluation (``stages="eval"``)."""
    if stages not in STAGES:
        raise ValueError(f"stages must be one of {STAGES}, got {stages!r}")
    logger = get_run_logger()
    run = Path(run_dir).expanduser().resolve()
    cfg = _resolve(preset, run, config_file, stages)
    logger.info("run %s: preset %s, stages %s", run, cfg.preset, stages)

    if stages == "full":
        harvest_task(cfg, run)
        jobs = cfg.train.jobs()
        progress = create_progress_artifact(0.0, key="fc-sae-training", description="SAEs trained")
        for i, job in enumerate(jobs, 1):
            # One SAE at a time: each already uses every core; failures stop the flow here.
            train_task(cfg, run, job.trainer, job.seed, job.point)
            update_progress_artifact(progress, 100.0 * i / len(jobs))

    from pipeline.evaluate import eval_progress, select_saes, task_note
    from pipeline.stages import report_progress

    saes = select_saes(run, None)  # every finished SAE; raises clearly when there is none
    pairs = [(sae, ev) for sae in saes for ev in cfg.eval.evals]
    futures = [eval_task.submit(cfg, run, sae, ev) for sae, ev in pairs]
    with eval_progress(run, pairs) as bar:
        for i, fut in enumerate(futures):
            fut.wait()  # a failed eval is recorded as rows with status "failed"; the others still land
            bar.update(1, note=task_note(pairs, i + 1))  # tasks start in submission order
    with report_progress(run, steps=2) as bar:
        results = aggregate_task(cfg, run)
        bar.update(1)
        report = report_task(cfg, run)
        _publish_results(run)
        bar.update(1)
    logger.info("results: %s  report: %s", results, report)
    return str(results)


def _publish_results(run: Path) -> None:
    """The results as Prefect artifacts: trainer x metric (mean, std, n over seeds) and problems."""
    from eval.results import load, problems, summary_metrics

    df = load(run)
    stats = summary_metrics(df).groupby(["eval", "metric", "trainer"])["value"].agg(["mean", "std", "count"])
    records = [{"eval": e, "metric": m, "trainer": t, "mean": f"{r['mean']:.5g}",
                "std": "" if pd.isna(r["std"]) else f"{r['std']:.3g}", "n_seeds": str(int(r["count"]))}
               for (e, m, t), r in stats.iterrows()]
    create_table_artifact(table=records, key="fc-sae-results",
                          description=f"trainer x metric over seeds for {run.name}")
    bad = problems(df).drop_duplicates()
    if len(bad):
        lines = ["| sae | eval | status | error |", "|---|---|---|---|"]
        lines += [f"| {r.sae} | {r.eval} | {r.status} | {str(r.error)[:200]} |" for r in bad.itertuples()]
        create_markdown_artifact(markdown="\n".join(lines), key="fc-sae-eval-problems",
                                 description="evals that failed or were skipped")
