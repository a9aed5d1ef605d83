"""Report stage: PNG plots and one HTML page under ``run_dir/report/``.

The page leads with pictures: the L0 frontier (each headline metric against the measured L0, one line
per trainer), then the verdict worded from the seed-paired intervals, then the tables (collapsed), then
the other plots. Every number comes from ``results.parquet`` (tables, frontier, verdict) or the SAEs'
training artifacts (train_log.jsonl, fc_history.parquet, splits.parquet: the per-SAE plots); a results
table alone, without the SAE folders, renders everything but the per-SAE plots. Table cells carry the
exact value in a ``data-value`` attribute so the page can be checked against the table.

``python -m pipeline.analysis.report RESULTS [--out DIR]`` renders the page of a run folder or of a bare
results.parquet (e.g. a committed one) into another folder.
"""
from __future__ import annotations

import argparse
import html
import math
import re
from pathlib import Path

import pandas as pd

from eval.results import RESULTS_FILE, load, problems, summary_metrics
from fc_base.io import write_text_atomic
from fc_base.sae_folder import list_sae_folders
from pipeline.analysis import plots
from pipeline.analysis.headline import LEGEND, headline_html
from pipeline.analysis.results_md import run_verdicts
from pipeline.config import RunConfig

FRONTIER = ("frontier.png", "L0 frontier",
            "Each headline metric against the measured L0 (the core eval's, on a synthetic model the synthetic "
            "eval's; mean over seeds; where no eval measured it, the target k), one line per trainer through "
            "its L0 points, each point the mean over seeds. Error bars: wide, light, in the trainer's colour: "
            "the standard deviation over training seeds (vertical: of the metric, horizontal: of the measured "
            "L0); thin, black: the eval's own noise per SAE (spread over k-sparse-probe seeds, absorption "
            "only). On a log L0 axis points within 1.4% of each other in L0 are drawn side by side (at most "
            "±4%) so none hides another.")
PLOTS = (  # (file, title, what it shows): the plots after the verdict and the tables
    ("summary.png", "Headline metrics",
     "mean over seeds; black error bars: standard deviation over seeds; orange: the eval's own noise per SAE"),
    ("absorption_per_letter.png", "Absorption per first letter", "sae-bench absorption fraction, mean over seeds"),
    ("detection.png", "Which tracker statistic finds absorption",
     "ROC AUC of each statistic (last snapshot) at picking out absorbing latents (sae-bench) or absorbed "
     "parents (ground truth) and main first-letter latents; mean ± std over SAEs; dashed: chance"),
    ("absorbing_scatter.png", "Frequency vs consistency of the latents the absorption eval named",
     "per latent, last tracker snapshot; red: absorbing latents, blue: main first-letter latents (seed-0 SAEs)"),
    ("fc_scatter.png", "Frequency vs consistency", "per latent, last tracker snapshot; contours: s = f (1 - c)"),
    ("score_histograms.png", "Absorption scores", "histogram of s per SAE, last tracker snapshot"),
    ("split_events.png", "Split events", "cumulative FC splits over training steps"),
    ("training_curves.png", "Training curves", "from each SAE's train_log.jsonl"),
    ("synthetic_absorption_by_depth.png", "Synthetic absorption by hierarchy depth",
     "share of each parent feature carried by its children's latents; mean over seeds, error bars: std"),
)
FOLDER_PLOTS = ("absorbing_scatter.png", "fc_scatter.png", "score_histograms.png", "split_events.png",
                "training_curves.png")
"""Plots drawn from the SAE folders' training artifacts, not from the results table."""


def _cell(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td data-value="nan">-</td>'
    return f'<td data-value="{float(value)!r}">{float(value):.4g}</td>'


def per_sae_table(table: pd.DataFrame) -> pd.DataFrame:
    """SAE x (eval:metric) of the summary metrics (the page's per-SAE table)."""
    summary = summary_metrics(table)
    summary = summary.assign(name=summary["eval"] + ":" + summary["metric"])
    return summary.pivot_table(index="sae", columns="name", values="value", aggfunc="first")


def trainer_table(table: pd.DataFrame) -> pd.DataFrame:
    """(eval:metric) x trainer: mean, std and seed count over seeds."""
    summary = summary_metrics(table)
    summary = summary.assign(name=summary["eval"] + ":" + summary["metric"])
    return summary.groupby(["name", "trainer"])["value"].agg(["mean", "std", "count"]).unstack("trainer")


def _trainer_html(stats: pd.DataFrame) -> str:
    if stats.empty:
        return "<p>No successful eval results.</p>"
    trainers = list(stats["mean"].columns)
    head = "".join(f"<th>{html.escape(t)} (mean)</th><th>± std</th><th>n</th>" for t in trainers)
    body = []
    for name in stats.index:
        cells = "".join(_cell(stats.loc[name, ("mean", t)]) + _cell(stats.loc[name, ("std", t)])
                        + f"<td>{int(stats.loc[name, ('count', t)]) if not math.isnan(stats.loc[name, ('count', t)]) else 0}</td>"
                        for t in trainers)
        body.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return f'<div class="wide"><table id="by-trainer"><tr><th>eval:metric</th>{head}</tr>{"".join(body)}</table></div>'


def _per_sae_html(wide: pd.DataFrame) -> str:
    if wide.empty:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in wide.columns)
    body = "".join(f"<tr><th>{html.escape(sae)}</th>{''.join(_cell(v) for v in row)}</tr>"
                   for sae, row in zip(wide.index, wide.to_numpy()))
    return f'<div class="wide"><table id="per-sae"><tr><th>sae</th>{head}</tr>{body}</table></div>'


def _problems_html(bad: pd.DataFrame) -> str:
    if bad.empty:
        return "<p>Every requested eval ran.</p>"
    rows = "".join(f"<tr><td>{html.escape(r.sae)}</td><td>{html.escape(r.eval)}</td><td>{r.status}</td>"
                   f"<td>{html.escape(r.error)}</td></tr>" for r in bad.itertuples())
    return f'<table id="not-evaluated"><tr><th>sae</th><th>eval</th><th>status</th><th>reason</th></tr>{rows}</table>'


def _synthetic_html(table: pd.DataFrame) -> str:
    """The ground-truth section of a synthetic run: headline metrics per trainer, mean ± std over seeds."""
    stats = plots.synthetic_trainer_stats(table)
    if stats.empty:
        return ""
    trainers = list(stats["mean"].columns)
    direction = dict(plots.SYNTHETIC_HEADLINE)
    head = "".join(f"<th>{html.escape(t)}</th>" for t in trainers)
    body = []
    for metric, _ in plots.SYNTHETIC_HEADLINE:
        if metric not in stats.index:
            continue
        arrow = {"higher": " ↑", "lower": " ↓"}.get(direction[metric], "")
        cells = "".join(
            f'<td data-value="{stats.loc[metric, ("mean", t)]!r}">{stats.loc[metric, ("mean", t)]:.3f} '
            f'± {0.0 if math.isnan(stats.loc[metric, ("std", t)]) else stats.loc[metric, ("std", t)]:.3f} '
            f'(n={int(stats.loc[metric, ("count", t)]) if not math.isnan(stats.loc[metric, ("count", t)]) else 0})</td>'
            for t in trainers)
        body.append(f"<tr><th>{html.escape(metric)}{arrow}</th>{cells}</tr>")
    return (f'<p>SAELens synthetic-data metrics and hierarchy absorption; '
            f'mean ± std over seeds (n seeds); ↑ higher is better, ↓ lower is better.</p>'
            f'<div class="wide"><table id="synthetic"><tr><th>metric</th>{head}</tr>{"".join(body)}</table></div>')


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f4f4f4}.wide{overflow-x:auto}
figure{margin:1em 0}figcaption{font-size:12px;color:#555;max-width:1000px}img{max-width:100%}
figure.lead img{width:1000px}figure.lead figcaption{font-size:13px}td.better{background:#e3f4e3}td.worse{background:#f8e1e1}
.legend,.note{font-size:12px;color:#444}ul.verdict li{margin:0.3em 0}
details{margin:0.6em 0}summary{cursor:pointer;font-weight:bold}table.headline td{white-space:nowrap}"""


def _figure(name: str, title: str, caption: str, lead: bool = False) -> str:
    """One plot with its title and caption; the lead plot is larger and titled like a section."""
    heading, cls = ("h2", ' class="lead"') if lead else ("h3", "")
    return (f'<figure{cls}><{heading}>{html.escape(title)}</{heading}><img src="{name}" alt="{html.escape(title)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _collapsible(summary: str, body: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>" if body else ""


def _inline_markdown(text: str) -> str:
    """The verdict sentences' markdown (`code`, **bold**) as HTML."""
    text = html.escape(text.removeprefix("- "))
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def verdict_html(results_path: Path, table: pd.DataFrame, baseline: str) -> str:
    """The verdict of RESULTS.md for this table: one sentence per arm and L0 point, from the intervals."""
    study, sentences = run_verdicts(results_path, table, baseline)
    if not sentences:
        return f"<p>No {html.escape(study.eval)} results: no verdict.</p>"
    lines = "".join(f"<li>{_inline_markdown(line)}</li>" for line in sentences)
    return (f'<p class="legend">{html.escape(study.primary)} (lower is better) of each trainer against '
            f"{html.escape(baseline)} at the same L0 point, paired by seed; Δ with its 95% interval; inside the "
            f'noise where the interval holds 0.</p><ul class="verdict">{lines}</ul>')


def _plot_files(table: pd.DataFrame, run_dir: Path, out: Path) -> dict[str, Path | None]:
    """Draw every plot; None for a plot the run has no data for."""
    sae_dirs = list_sae_folders(run_dir)
    shown = plots.representative(sae_dirs)  # per-SAE plots: seed-0 SAEs first, at most 9
    return {
        "frontier.png": plots.frontier(table, out / "frontier.png"),
        "summary.png": plots.summary_bars(table, out / "summary.png"),
        "absorption_per_letter.png": plots.absorption_per_letter(table, out / "absorption_per_letter.png"),
        "detection.png": plots.detection_bars(table, out / "detection.png"),
        "absorbing_scatter.png": plots.absorbing_scatter(run_dir, shown, out / "absorbing_scatter.png"),
        "fc_scatter.png": plots.fc_scatter(shown, out / "fc_scatter.png"),
        "score_histograms.png": plots.score_histograms(shown, out / "score_histograms.png"),
        "split_events.png": plots.split_events(sae_dirs, out / "split_events.png"),
        "training_curves.png": plots.training_curves(shown, out / "training_curves.png"),
        "synthetic_absorption_by_depth.png": plots.absorption_by_depth(table, out / "synthetic_absorption_by_depth.png"),
    }


def _more_plots_html(made: dict[str, Path | None], has_folders: bool) -> str:
    """The plots after the tables, and one line each for those this run cannot draw."""
    figures, missing = [], []
    for name, title, caption in PLOTS:
        if made[name] is not None:
            figures.append(_figure(name, title, caption))
        elif has_folders or name not in FOLDER_PLOTS:
            missing.append(f"<li>{html.escape(title)}: no data in this run</li>")
    note = "" if has_folders else (
        '<p class="note">Training-artifact plots (frequency vs consistency, absorption scores, split events, '
        "training curves) skipped: only the results table is here, not the SAE folders (saes/).</p>")
    return "".join(figures) + note + ('<ul class="note">' + "".join(missing) + "</ul>" if missing else "")


def _tables_html(table: pd.DataFrame, baseline: str) -> str:
    """Every table, each in a collapsed section."""
    bad = problems(table)
    headline = (f'<p class="legend">{html.escape(LEGEND.format(baseline=baseline))} Green: the interval excludes 0 '
                f"on the better side; red: on the worse side.</p>{headline_html(table, baseline)}")
    return "".join((
        _collapsible(f"Headline metrics: mean ± std over seeds and the paired difference to {baseline}", headline),
        _collapsible("Ground truth (synthetic model)", _synthetic_html(table)),
        _collapsible("Every metric by trainer (mean and spread over seeds)", _trainer_html(trainer_table(table))),
        _collapsible("Every metric per SAE", _per_sae_html(per_sae_table(table))),
        _collapsible(f"Not evaluated ({len(bad)} tasks)" if len(bad) else "Not evaluated: none", _problems_html(bad)),
    ))


def report(cfg: RunConfig | None, run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the plots and ``index.html`` into ``out_dir`` (default ``run_dir/report``); returns the
    HTML path. ``run_dir`` needs only its results.parquet; the SAE folders add the per-SAE plots."""
    run_dir = Path(run_dir)
    table = load(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    baseline = "topk" if "topk" in set(table["trainer"]) else str(table["trainer"].iloc[0])
    made = _plot_files(table, run_dir, out)
    has_folders = bool(list_sae_folders(run_dir))
    lead = (_figure(*FRONTIER, lead=True) if made["frontier.png"] is not None
            else '<p class="note">No frontier: the table has no headline metric at an L0 point.</p>')
    models = ", ".join(sorted(f"{m} layer {l}" for m, l in set(zip(table["model"], table["layer"]))))
    source = ("plots from the results and the SAEs' training artifacts" if has_folders
              else "every plot from the results table")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>fc-sae report: {html.escape(run_dir.name)}</title>
<style>{STYLE}</style></head><body>
<h1>fc-sae report: {html.escape(run_dir.name)}</h1>
<p>Model: {html.escape(models)}. SAEs: {len(set(table['sae']))}. Lower absorption is better.
Numbers from <code>results.parquet</code>; {source}.</p>
{lead}
<h2>Verdict</h2>{verdict_html(run_dir / RESULTS_FILE, table, baseline)}
<h2>Tables</h2>{_tables_html(table, baseline)}
<h2>More plots</h2>{_more_plots_html(made, has_folders)}
</body></html>
"""
    return write_text_atomic(out / "index.html", page)


def _run_dir_of(results: Path) -> Path:
    """A run folder, or the folder of a results.parquet named directly."""
    return results.parent if results.name == RESULTS_FILE else results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.analysis.report",
                                     description="Write the HTML report of a run folder or of a results.parquet.")
    parser.add_argument("results", type=Path, help="run folder, or a results.parquet (e.g. results/<run>/results.parquet)")
    parser.add_argument("--out", type=Path, help="folder for index.html and the plots (default: <run folder>/report)")
    args = parser.parse_args(argv)
    print(f"report: {report(None, _run_dir_of(args.results), args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
