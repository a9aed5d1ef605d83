"""The headline table a reader looks at first (report page and RESULTS.md): per trainer and L0 target,
the few metrics that answer the research question, each with its direction, the seed spread, the eval's
own noise where it reports one, and the seed-paired difference to the baseline with a 95% interval."""
from __future__ import annotations

import html
import math
from typing import NamedTuple

import pandas as pd

from eval.compare import paired_comparison


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


def _num(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _digits(metric: str) -> int:
    return 1 if metric in ("l0", "mean_num_split_features") else 3


def cell_text(r: pd.Series, baseline: str) -> tuple[str, str]:
    """('mean ± std (eval ± e)', 'Δ +d [lo, hi]' or '') for one frame row."""
    d = _digits(r["metric"] if "metric" in r.index else r.name)
    first = f"{_num(r['mean'], d)} ± {_num(r['std'], d)}"
    if not math.isnan(r["eval_std"]):
        first += f" (eval ± {_num(r['eval_std'], d)})"
    second = ""
    if r["trainer"] != baseline and r["n_pairs"] > 0:
        ci = "" if math.isnan(r["ci_low"]) else f" [{_num(r['ci_low'], d)}, {_num(r['ci_high'], d)}]"
        second = f"Δ {r['diff']:+.{d}f}{ci}"
    return first, second


def _ordered(frame: pd.DataFrame, trainers: list[str] | None, baseline: str) -> list[str]:
    found = sorted(dict.fromkeys(frame["trainer"]), key=lambda t: (t != baseline, t))
    return [t for t in (trainers or found) if t in found]


def headline_markdown(table: pd.DataFrame, baseline: str = "topk", trainers: list[str] | None = None) -> str:
    """One markdown table per eval (rows trainer @ k, columns the headline metrics)."""
    frame = headline_frame(table, baseline, trainers)
    if frame.empty:
        return "(no headline metrics in this table)\n"
    blocks = []
    for ev in dict.fromkeys(frame["eval"]):
        heads = [h for h in present(table) if h.eval == ev]
        part = frame[frame["eval"] == ev]
        lines = ["| trainer | k | n | " + " | ".join(f"{h.label} {ARROWS[h.direction]}".strip() for h in heads) + " |",
                 "|---|---|---|" + "---|" * len(heads)]
        for k in sorted(part["k"].unique()):
            for trainer in _ordered(part, trainers, baseline):
                rows = part[(part["trainer"] == trainer) & (part["k"] == k)].set_index("metric")
                if rows.empty:
                    continue
                cells = []
                for h in heads:
                    if h.metric not in rows.index:
                        cells.append("–")
                        continue
                    first, second = cell_text(rows.loc[h.metric], baseline)
                    cells.append(first + (f"<br>{second}" if second else ""))
                kk = "–" if k < 0 else str(k)
                lines.append(f"| {trainer} | {kk} | {int(rows['n'].max())} | " + " | ".join(cells) + " |")
        blocks.append(f"**{ev}**\n\n" + "\n".join(lines) + "\n")
    return "\n".join(blocks)


def headline_html(table: pd.DataFrame, baseline: str = "topk", trainers: list[str] | None = None) -> str:
    """The same tables as HTML (each in a horizontally scrolling box so the page keeps its width)."""
    frame = headline_frame(table, baseline, trainers)
    if frame.empty:
        return "<p>No headline metrics in this run.</p>"
    blocks = []
    for ev in dict.fromkeys(frame["eval"]):
        heads = [h for h in present(table) if h.eval == ev]
        part = frame[frame["eval"] == ev]
        head = "".join(f"<th>{html.escape(h.label)} {ARROWS[h.direction]}</th>" for h in heads)
        body = []
        for k in sorted(part["k"].unique()):
            for trainer in _ordered(part, trainers, baseline):
                rows = part[(part["trainer"] == trainer) & (part["k"] == k)].set_index("metric")
                if rows.empty:
                    continue
                cells = []
                for h in heads:
                    if h.metric not in rows.index:
                        cells.append("<td>–</td>")
                        continue
                    first, second = cell_text(rows.loc[h.metric], baseline)
                    cls = ""
                    r = rows.loc[h.metric]
                    if second and not math.isnan(r["ci_low"]) and (r["ci_low"] > 0 or r["ci_high"] < 0):
                        better = (r["diff"] > 0) == (h.direction == "up") if h.direction else None
                        cls = {True: ' class="better"', False: ' class="worse"', None: ""}[better]
                    cells.append(f"<td{cls}>{html.escape(first)}" + (f"<br><small>{html.escape(second)}</small>"
                                                                    if second else "") + "</td>")
                kk = "–" if k < 0 else str(k)
                body.append(f"<tr><th>{html.escape(trainer)}</th><td>{kk}</td><td>{int(rows['n'].max())}</td>"
                            + "".join(cells) + "</tr>")
        blocks.append(f'<h3>{html.escape(ev)}</h3><div class="wide"><table class="headline"><tr><th>trainer</th>'
                      f'<th>k</th><th>n</th>{head}</tr>{"".join(body)}</table></div>')
    return "".join(blocks)


LEGEND = ("mean ± std over seeds (n seeds); eval ± the eval's own noise per SAE (spread over k-sparse-probe "
          "seeds); Δ: difference to {baseline} at the same k, paired by seed, with its 95% interval (bootstrap "
          "over seed pairs and letters for absorption, t over seed pairs otherwise); ↑ higher is better, "
          "↓ lower is better.")
