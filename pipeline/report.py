"""Report stage: PNG plots and one HTML page under ``run_dir/report/``.

Every number on the page comes from ``results.parquet`` (the tables) or the SAEs' training artifacts
(train_log.jsonl, fc_history.parquet, splits.parquet: the plots).  Table cells carry the exact value
in a ``data-value`` attribute so the page can be checked against the table.
"""
from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from eval import plots
from eval.headline import LEGEND, headline_html
from eval.results import load, problems, summary_metrics
from fc_base.io import write_text_atomic
from fc_base.sae_folder import list_sae_folders
from pipeline.config import RunConfig

PLOTS = (  # (file, title, what it shows)
    ("summary.png", "Headline metrics",
     "mean over seeds; black error bars: standard deviation over seeds; orange: the eval's own noise per SAE"),
    ("frontier.png", "L0 frontier", "each metric against the L0 the core eval measured (the target k where "
     "there is none), one line per trainer; error bars: seed std (thick, the line's colour) and eval noise (thin, black)"),
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
    return f'<table id="by-trainer"><tr><th>eval:metric</th>{head}</tr>{"".join(body)}</table>'


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
    return (f'<h2>Ground truth (synthetic model)</h2><p>SAELens synthetic-data metrics and hierarchy absorption; '
            f'mean ± std over seeds (n seeds); ↑ higher is better, ↓ lower is better.</p>'
            f'<div class="wide"><table id="synthetic"><tr><th>metric</th>{head}</tr>{"".join(body)}</table></div>')


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f4f4f4}.wide{overflow-x:auto}
figure{margin:1em 0}figcaption{font-size:12px;color:#555}img{max-width:100%}
td.better{background:#e3f4e3}td.worse{background:#f8e1e1}.legend{font-size:12px;color:#444}
details{margin-top:2em}summary{cursor:pointer;font-weight:bold}table.headline td{white-space:nowrap}"""


def report(cfg: RunConfig, run_dir: str | Path) -> Path:
    """Write the plots and ``report/index.html``; returns the HTML path."""
    run_dir = Path(run_dir)
    table = load(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    sae_dirs = list_sae_folders(run_dir)
    shown = plots.representative(sae_dirs)  # per-SAE plots: seed-0 SAEs first, at most 9
    baseline = "topk" if "topk" in set(table["trainer"]) else str(table["trainer"].iloc[0])
    made = {
        "summary.png": plots.summary_bars(table, out / "summary.png"),
        "frontier.png": plots.frontier(table, out / "frontier.png"),
        "absorption_per_letter.png": plots.absorption_per_letter(table, out / "absorption_per_letter.png"),
        "detection.png": plots.detection_bars(table, out / "detection.png"),
        "absorbing_scatter.png": plots.absorbing_scatter(run_dir, shown, out / "absorbing_scatter.png"),
        "fc_scatter.png": plots.fc_scatter(shown, out / "fc_scatter.png"),
        "score_histograms.png": plots.score_histograms(shown, out / "score_histograms.png"),
        "split_events.png": plots.split_events(sae_dirs, out / "split_events.png"),
        "training_curves.png": plots.training_curves(shown, out / "training_curves.png"),
        "synthetic_absorption_by_depth.png": plots.absorption_by_depth(table, out / "synthetic_absorption_by_depth.png"),
    }
    figures, missing = [], []
    for name, title, caption in PLOTS:
        if made[name] is None:
            missing.append(f"<li>{html.escape(title)}: no data in this run</li>")
            continue
        figures.append(f'<figure><h3>{html.escape(title)}</h3><img src="{name}" alt="{html.escape(title)}">'
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    models = ", ".join(sorted(f"{m} layer {l}" for m, l in set(zip(table["model"], table["layer"]))))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>fc-sae report: {html.escape(run_dir.name)}</title>
<style>{STYLE}</style></head><body>
<h1>fc-sae report: {html.escape(run_dir.name)}</h1>
<p>Model: {html.escape(models)}. SAEs: {len(set(table['sae']))}. Lower absorption is better.
Numbers from <code>results.parquet</code>; plots from the results and the SAEs' training artifacts.</p>
<h2>Headline</h2><p class="legend">{html.escape(LEGEND.format(baseline=baseline))} Green: the interval
excludes 0 on the better side; red: on the worse side.</p>{headline_html(table, baseline)}
<h2>Plots</h2>{''.join(figures)}{'<ul>' + ''.join(missing) + '</ul>' if missing else ''}
<details><summary>Every metric: ground-truth detail, by trainer, per SAE, not evaluated</summary>
{_synthetic_html(table)}<h2>By trainer (mean and spread over seeds)</h2>{_trainer_html(trainer_table(table))}
<h2>Per SAE</h2>{_per_sae_html(per_sae_table(table))}
<h2>Not evaluated</h2>{_problems_html(problems(table))}
</details>
</body></html>
"""
    return write_text_atomic(out / "index.html", page)
