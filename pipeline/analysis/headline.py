"""The headline table a reader looks at first (report page and RESULTS.md): per trainer and L0 target,
the few metrics that answer the research question, each with its direction, the seed spread, the eval's
own noise where it reports one, and the seed-paired difference to the baseline with a 95% interval."""
from __future__ import annotations

import html
import math
from typing import NamedTuple

import pandas as pd

from pipeline.analysis.compare import paired_comparison


class Headline(NamedTuple):
    eval: str
    metric: str
    label: str
    direction: str
    """"up": higher is better, "down": lower is better, "": no better side."""


HEADLINES = (
    Headline("absorption", "mean_absorption_fraction_score", "absorption fraction", "down"),
    Headline("absorption", "mean_full_absorption_score", "full absorption", "down"),
    Headline("absorption", "mean_num_split_features", "split features", ""),
    Headline("core", "explained_variance_legacy", "explained variance", "up"),
    Headline("core", "ce_loss_score", "CE-loss score", "up"),
    Headline("core", "l0", "L0", ""),
    Headline("synthetic", "absorption_rate", "absorption rate (truth)", "down"),
    Headline("synthetic", "fully_absorbed_fraction", "fully absorbed (truth)", "down"),
    Headline("synthetic", "f1", "F1", "up"),
    Headline("synthetic", "mcc", "MCC", "up"),
    Headline("synthetic", "explained_variance", "explained variance", "up"),
)
ARROWS = {"up": "↑", "down": "↓", "": ""}


def present(table: pd.DataFrame) -> list[Headline]:
    """The headline metrics this table has ok rows for."""
    ok = table[table["status"] == "ok"]
    have = set(zip(ok["eval"], ok["metric"]))
    return [h for h in HEADLINES if (h.eval, h.metric) in have]


def headline_frame(table: pd.DataFrame, baseline: str = "topk", trainers: list[str] | None = None) -> pd.DataFrame:
    """Long frame: one row per (eval, metric, trainer, k) with mean, std, eval_std, n and the paired
    difference to ``baseline`` (diff, ci_low, ci_high, ci_kind, n_pairs)."""
    parts = []
    for ev in dict.fromkeys(h.eval for h in present(table)):
        metrics = [h.metric for h in present(table) if h.eval == ev]
        cmp = paired_comparison(table, metrics, baseline, ev)
        parts.append(cmp.assign(eval=ev))
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    if trainers:
        out = out[out["trainer"].isin(trainers)]
    return out


def fmt_number(x: float, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or an en dash for a missing one."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def interval_text(r: pd.Series, digits: int = 3) -> str:
    """'+d [lo, hi]': a paired difference and its interval (no interval with one pair)."""
    ci = "" if math.isnan(r["ci_low"]) else f" [{fmt_number(r['ci_low'], digits)}, {fmt_number(r['ci_high'], digits)}]"
    return f"{r['diff']:+.{digits}f}{ci}"


def _digits(metric: str) -> int:
    return 1 if metric in ("l0", "mean_num_split_features") else 3


def cell_text(r: pd.Series, baseline: str) -> tuple[str, str]:
    """('mean ± std (eval ± e)', 'Δ +d [lo, hi]' or '') for one frame row."""
    d = _digits(r["metric"] if "metric" in r.index else r.name)
    first = f"{fmt_number(r['mean'], d)} ± {fmt_number(r['std'], d)}"
    if not math.isnan(r["eval_std"]):
        first += f" (eval ± {fmt_number(r['eval_std'], d)})"
    second = ""
    if r["trainer"] != baseline and r["n_pairs"] > 0:
        second = f"Δ {interval_text(r, d)}"
    return first, second


def _ordered(frame: pd.DataFrame, trainers: list[str] | None, baseline: str) -> list[str]:
    found = sorted(dict.fromkeys(frame["trainer"]), key=lambda t: (t != baseline, t))
    return [t for t in (trainers or found) if t in found]


class Cell(NamedTuple):
    first: str
    """mean ± std (eval ± e)"""
    second: str
    """Δ and interval against the baseline ('' for the baseline itself)"""
    better: bool | None
    """True/False when the interval excludes 0 on the better/worse side; None otherwise."""


def _tables(table: pd.DataFrame, baseline: str, trainers: list[str] | None
            ) -> list[tuple[str, list[Headline], list[tuple[str, str, int, list[Cell | None]]]]]:
    """Per eval: its headline metrics and rows (trainer, k label, n, one Cell or None per metric)."""
    frame = headline_frame(table, baseline, trainers)
    if frame.empty:
        return []
    out = []
    for ev in dict.fromkeys(frame["eval"]):
        heads = [h for h in present(table) if h.eval == ev]
        part = frame[frame["eval"] == ev]
        rows = []
        for k in sorted(part["k"].unique()):
            for trainer in _ordered(part, trainers, baseline):
                hits = part[(part["trainer"] == trainer) & (part["k"] == k)].set_index("metric")
                if hits.empty:
                    continue
                cells: list[Cell | None] = []
                for h in heads:
                    if h.metric not in hits.index:
                        cells.append(None)
                        continue
                    r = hits.loc[h.metric]
                    first, second = cell_text(r, baseline)
                    better = None
                    if second and h.direction and not math.isnan(r["ci_low"]) and (r["ci_low"] > 0 or r["ci_high"] < 0):
                        better = (r["diff"] > 0) == (h.direction == "up")
                    cells.append(Cell(first, second, better))
                rows.append((trainer, "–" if k < 0 else str(k), int(hits["n"].max()), cells))
        out.append((ev, heads, rows))
    return out


def headline_markdown(table: pd.DataFrame, baseline: str = "topk", trainers: list[str] | None = None) -> str:
    """One markdown table per eval (rows trainer @ k, columns the headline metrics)."""
    blocks = []
    for ev, heads, rows in _tables(table, baseline, trainers):
        lines = ["| trainer | k | n | " + " | ".join(f"{h.label} {ARROWS[h.direction]}".strip() for h in heads) + " |",
                 "|---|---|---|" + "---|" * len(heads)]
        for trainer, k, n, cells in rows:
            text = ["–" if c is None else c.first + (f"<br>{c.second}" if c.second else "") for c in cells]
            lines.append(f"| {trainer} | {k} | {n} | " + " | ".join(text) + " |")
        blocks.append(f"**{ev}**\n\n" + "\n".join(lines) + "\n")
    return "\n".join(blocks) if blocks else "(no headline metrics in this table)\n"


def headline_html(table: pd.DataFrame, baseline: str = "topk", trainers: list[str] | None = None) -> str:
    """The same tables as HTML (each in a horizontally scrolling box so the page keeps its width)."""
    blocks = []
    for ev, heads, rows in _tables(table, baseline, trainers):
        head = "".join(f"<th>{html.escape(h.label)} {ARROWS[h.direction]}</th>" for h in heads)
        body = []
        for trainer, k, n, cells in rows:
            tds = []
            for c in cells:
                if c is None:
                    tds.append("<td>–</td>")
                    continue
                cls = {True: ' class="better"', False: ' class="worse"', None: ""}[c.better]
                extra = f"<br><small>{html.escape(c.second)}</small>" if c.second else ""
                tds.append(f"<td{cls}>{html.escape(c.first)}{extra}</td>")
            body.append(f"<tr><th>{html.escape(trainer)}</th><td>{k}</td><td>{n}</td>{''.join(tds)}</tr>")
        blocks.append(f'<h3>{html.escape(ev)}</h3><div class="wide"><table class="headline"><tr><th>trainer</th>'
                      f'<th>k</th><th>n</th>{head}</tr>{"".join(body)}</table></div>')
    return "".join(blocks) if blocks else "<p>No headline metrics in this run.</p>"


LEGEND = ("mean ± std over seeds (n seeds); eval ± the eval's own noise per SAE (spread over k-sparse-probe "
          "seeds); Δ: difference to {baseline} at the same k, paired by seed, with its 95% interval (bootstrap "
          "over seed pairs and letters for absorption, t over seed pairs otherwise); ↑ higher is better, "
          "↓ lower is better.")
