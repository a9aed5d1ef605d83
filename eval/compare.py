"""Trainer comparisons a reader can trust: per trainer and metric the mean ± std over seeds, and
the difference to a baseline trainer *paired by seed* with a 95% t-interval over the seed pairs.

With n seed pairs the interval is mean(diff) ± t(0.975, n - 1) * sd(diff) / sqrt(n); with one pair
there is no interval. A difference whose interval contains 0 is inside the seed noise.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from fc_base.io import write_text_atomic

# Two-sided 95% Student t quantiles by degrees of freedom (no scipy needed for these few).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
COMPARE_FILE = "compare.md"


def t975(dof: int) -> float:
    return _T975.get(dof, 1.96 if dof > 30 else 2.0)


def paired_comparison(table: pd.DataFrame, metrics: list[str], baseline: str, eval_name: str | None = None
                      ) -> pd.DataFrame:
    """One row per (trainer, metric): n, mean, std, and the seed-paired difference to ``baseline``
    (diff, ci_low, ci_high, n_pairs)."""
    rows = table[(table["status"] == "ok") & table["metric"].isin(metrics)]
    if eval_name is not None:
        rows = rows[rows["eval"] == eval_name]
    wide = rows.pivot_table(index=["trainer", "seed"], columns="metric", values="value", aggfunc="first")
    out = []
    base = wide.loc[baseline] if baseline in wide.index.get_level_values(0) else None
    for trainer in wide.index.get_level_values(0).unique():
        own = wide.loc[trainer]
        for metric in metrics:
            if metric not in own:
                continue
            values = own[metric].dropna()
            rec = {"trainer": trainer, "metric": metric, "n": len(values), "mean": values.mean(),
                   "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                   "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n_pairs": 0}
            if base is not None and trainer != baseline and metric in base:
                pairs = pd.concat([values, base[metric]], axis=1, join="inner").dropna()
                d = pairs.iloc[:, 0] - pairs.iloc[:, 1]
                rec.update(diff=d.mean(), n_pairs=len(d))
                if len(d) > 1:
                    half = t975(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
                    rec.update(ci_low=d.mean() - half, ci_high=d.mean() + half)
            out.append(rec)
    return pd.DataFrame(out)


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def comparison_markdown(cmp: pd.DataFrame, metrics: list[str], baseline: str, trainers: list[str] | None = None) -> str:
    """Trainer x metric markdown: 'mean ± std' and, below it, the paired difference and its interval."""
    trainers = trainers or list(dict.fromkeys(cmp["trainer"]))
    head = "| trainer | " + " | ".join(metrics) + " |\n|---|" + "---|" * len(metrics) + "\n"
    lines = []
    for trainer in trainers:
        part = cmp[cmp["trainer"] == trainer].set_index("metric")
        cells = []
        for metric in metrics:
            if metric not in part.index:
                cells.append("-")
                continue
            r = part.loc[metric]
            cell = f"{_fmt(r['mean'])} ± {_fmt(r['std'])}"
            if trainer != baseline and r["n_pairs"] > 0:
                ci = "" if math.isnan(r["ci_low"]) else f" [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
                cell += f"<br>Δ {r['diff']:+.3f}{ci}"
            cells.append(cell)
        n = int(part["n"].max()) if len(part) else 0
        lines.append(f"| {trainer} (n={n}) | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def write_comparison(run_dir: str | Path, table: pd.DataFrame, metrics: list[str], baseline: str,
                     eval_name: str | None = None, trainers: list[str] | None = None) -> str:
    cmp = paired_comparison(table, metrics, baseline, eval_name)
    text = (f"Mean ± std over seeds; Δ: difference to {baseline} paired by seed, [95% t-interval over the "
            f"seed pairs].\n\n" + comparison_markdown(cmp, metrics, baseline, trainers))
    write_text_atomic(Path(run_dir) / COMPARE_FILE, text)
    return text
