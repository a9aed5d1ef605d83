"""Trainer comparisons a reader can trust: per trainer, L0 target (k) and metric the mean ± std over
seeds beside the eval's own noise, and the difference to a baseline trainer at the same k *paired by
seed* with a 95% interval.

Where the table has per-letter values (sae-bench absorption) the interval is a bootstrap that
resamples seed pairs and letters; otherwise it is mean(diff) ± t(0.975, n - 1) * sd(diff) / sqrt(n)
over the n seed pairs. With one pair there is no interval. A difference whose interval contains 0
is inside the noise.
"""
from __future__ import annotations

import math
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from eval.absorption_metrics import LETTER_METRIC_OF
from eval.results import with_l0_point
from fc_base.io import write_text_atomic

# Two-sided 95% Student t quantiles by degrees of freedom (no scipy needed for these few).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
COMPARE_FILE = "compare.md"


def t975(dof: int) -> float:
    return _T975.get(dof, 1.96 if dof > 30 else 2.0)


EVAL_STD_SUFFIX = "_eval_std"
N_BOOT = 4000


def paired_comparison(table: pd.DataFrame, metrics: list[str], baseline: str, eval_name: str | None = None,
                      *, n_boot: int = N_BOOT, boot_seed: int = 0) -> pd.DataFrame:
    """One row per (trainer, k, metric): n, mean, std over seeds, eval_std (the mean per-SAE eval
    noise, where the eval reports one), and the seed-paired difference to ``baseline`` at the same k
    (diff, ci_low, ci_high, ci_kind, n_pairs).

    The interval is a 95% bootstrap over seed pairs and letters where the table has per-letter
    values (absorption), else a t-interval over the seed pairs."""
    rows = table[table["status"] == "ok"]
    if eval_name is not None:
        rows = rows[rows["eval"] == eval_name]
    rows = with_l0_point(rows)
    wide = rows.pivot_table(index=["trainer", "k", "seed"], columns="metric", values="value", aggfunc="first")
    out = []
    for (trainer, k), own in wide.groupby(level=[0, 1]):
        own = own.droplevel([0, 1])
        has_base = (baseline, k) in wide.index.droplevel(2)
        base = wide.loc[(baseline, k)] if has_base else None
        for metric in metrics:
            if metric not in own or own[metric].isna().all():
                continue
            values = own[metric].dropna()
            noise = own.get(metric + EVAL_STD_SUFFIX)
            rec = {"trainer": trainer, "k": k, "metric": metric, "n": len(values), "mean": values.mean(),
                   "std": values.std(ddof=1) if len(values) > 1 else math.nan,
                   "eval_std": float(noise.mean()) if noise is not None and noise.notna().any() else math.nan,
                   "diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "ci_kind": "", "n_pairs": 0}
            if base is not None and trainer != baseline and metric in base:
                pairs = pd.concat([values, base[metric]], axis=1, join="inner").dropna()
                d = pairs.iloc[:, 0] - pairs.iloc[:, 1]
                rec.update(diff=d.mean(), n_pairs=len(d))
                letters = _letter_diffs(own, base, metric, list(pairs.index))
                if letters is not None and len(d) > 1:
                    # one generator per cell: an interval does not move when other rows are added
                    rng = np.random.default_rng([boot_seed, max(int(k), 0), zlib.crc32(trainer.encode()),
                                                 zlib.crc32(metric.encode())])
                    lo, hi = _bootstrap_ci(letters, rng, n_boot)
                    rec.update(ci_low=lo, ci_high=hi, ci_kind="bootstrap seeds x letters")
                elif len(d) > 1:
                    half = t975(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
                    rec.update(ci_low=d.mean() - half, ci_high=d.mean() + half, ci_kind="t over seeds")
            out.append(rec)
    return pd.DataFrame(out)


def _letter_diffs(own: pd.DataFrame, base: pd.DataFrame, metric: str, seeds: list) -> np.ndarray | None:
    """Seed x letter differences (NaN where a letter was not scored) or None without letter rows."""
    name = LETTER_METRIC_OF.get(metric)
    cols = [c for c in own.columns if name and c.startswith("letter/") and c.endswith("/" + name)]
    if not cols or not all(c in base for c in cols):
        return None
    return own.loc[seeds, cols].to_numpy(float) - base.loc[seeds, cols].to_numpy(float)


def _bootstrap_ci(diff_SL: np.ndarray, rng: np.random.Generator, n_boot: int) -> tuple[float, float]:
    """95% percentile interval of mean-over-seeds(mean-over-letters) under resampling of both."""
    n_s, n_l = diff_SL.shape
    seed_idx_BS = rng.integers(0, n_s, size=(n_boot, n_s))
    letter_idx_BL = rng.integers(0, n_l, size=(n_boot, n_l))
    draws_BSL = diff_SL[seed_idx_BS[:, :, None], letter_idx_BL[:, None, :]]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a draw of only unscored letters is NaN
        stat_B = np.nanmean(np.nanmean(draws_BSL, axis=2), axis=1)
    stat_B = stat_B[~np.isnan(stat_B)]
    return float(np.quantile(stat_B, 0.025)), float(np.quantile(stat_B, 0.975))


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def comparison_markdown(cmp: pd.DataFrame, metrics: list[str], baseline: str, trainers: list[str] | None = None) -> str:
    """Trainer x metric markdown, one table per k: 'mean ± std' over seeds, the eval's own noise
    where known, and below it the paired difference to ``baseline`` with its interval."""
    if cmp.empty:
        return "(no rows)\n"
    if "k" not in cmp:
        cmp = cmp.assign(k=-1)
    trainers = trainers or list(dict.fromkeys(cmp["trainer"]))
    blocks = []
    for k in sorted(cmp["k"].unique()):
        at_k = cmp[cmp["k"] == k]
        head = ("" if k < 0 else f"**k = {k}**\n\n") + "| trainer | " + " | ".join(metrics) + " |\n|---|" + \
            "---|" * len(metrics) + "\n"
        lines = []
        for trainer in trainers:
            part = at_k[at_k["trainer"] == trainer].set_index("metric")
            if part.empty:
                continue
            cells = []
            for metric in metrics:
                if metric not in part.index:
                    cells.append("-")
                    continue
                r = part.loc[metric]
                cell = f"{_fmt(r['mean'])} ± {_fmt(r['std'])}"
                if not math.isnan(r.get("eval_std", math.nan)):
                    cell += f" (eval ± {_fmt(r['eval_std'])})"
                if trainer != baseline and r["n_pairs"] > 0:
                    ci = "" if math.isnan(r["ci_low"]) else f" [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
                    cell += f"<br>Δ {r['diff']:+.3f}{ci}"
                cells.append(cell)
            lines.append(f"| {trainer} (n={int(part['n'].max())}) | " + " | ".join(cells) + " |")
        blocks.append(head + "\n".join(lines) + "\n")
    return "\n".join(blocks)


def default_metrics(table: pd.DataFrame) -> list[str]:
    """The summary metrics of a table, without the eval-noise companions and timing rows."""
    from eval.results import summary_metrics

    names = summary_metrics(table)["metric"].unique()
    return sorted(m for m in names if not m.endswith(EVAL_STD_SUFFIX) and m != "eval_seconds")


def write_comparison(run_dir: str | Path, table: pd.DataFrame, metrics: list[str], baseline: str,
                     eval_name: str | None = None, trainers: list[str] | None = None) -> str:
    cmp = paired_comparison(table, metrics, baseline, eval_name)
    text = (f"Mean ± std over seeds (eval ± the eval's own noise per SAE, where it reports one); Δ: "
            f"difference to {baseline} at the same k, paired by seed, [95% interval: bootstrap over seed "
            f"pairs and letters for absorption metrics, t over seed pairs otherwise].\n\n"
            + comparison_markdown(cmp, metrics, baseline, trainers))
    write_text_atomic(Path(run_dir) / COMPARE_FILE, text)
    return text
