"""Trainer comparisons a reader can trust: per trainer, L0 target (k) and metric the mean ± std over
seeds beside the eval's own noise, and the difference to a baseline trainer at the same k *paired by
seed* with a 95% interval.

Where the table has per-letter values (sae-bench absorption) the interval is a percentile bootstrap
(``scipy.stats.bootstrap``) that resamples seed pairs and letters independently; otherwise it is
mean(diff) ± t(0.975, n - 1) * sd(diff) / sqrt(n) over the n seed pairs, with the Student t quantile
from ``scipy.stats.t``. With one pair there is no interval. A difference whose interval contains 0
is inside the noise.
"""
from __future__ import annotations

import math
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from eval.absorption.metrics import LETTER_METRIC_OF
from eval.results import with_l0_point
from fc_base.io import write_text_atomic

COMPARE_FILE = "compare.md"
CONFIDENCE = 0.95


def t975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (two-sided 95%)."""
    if dof < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {dof}")
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, dof))


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
                    lo, hi = _t_interval(d.to_numpy(float))
                    rec.update(ci_low=lo, ci_high=hi, ci_kind="t over seeds")
            out.append(rec)
    return pd.DataFrame(out)


def _t_interval(diff_P: np.ndarray) -> tuple[float, float]:
    """95% Student t interval of the mean of the seed-pair differences ``diff_P``."""
    mean, sem = float(diff_P.mean()), float(stats.sem(diff_P))
    if sem == 0.0:  # every pair differs by the same amount
        return mean, mean
    lo, hi = stats.t.interval(CONFIDENCE, len(diff_P) - 1, loc=mean, scale=sem)
    return float(lo), float(hi)


def _letter_diffs(own: pd.DataFrame, base: pd.DataFrame, metric: str, seeds: list) -> np.ndarray | None:
    """Seed x letter differences (NaN where a letter was not scored) or None without letter rows."""
    name = LETTER_METRIC_OF.get(metric)
    cols = [c for c in own.columns if name and c.startswith("letter/") and c.endswith("/" + name)]
    if not cols or not all(c in base for c in cols):
        return None
    return own.loc[seeds, cols].to_numpy(float) - base.loc[seeds, cols].to_numpy(float)


def _bootstrap_ci(diff_SL: np.ndarray, rng: np.random.Generator, n_boot: int) -> tuple[float, float]:
    """95% percentile interval of mean-over-seeds(mean-over-letters), seeds and letters resampled
    independently (``scipy.stats.bootstrap`` with the two index sets as unpaired samples).

    Letters scored for no seed pair carry no observation and are left out; a letter missing for some
    seeds only is skipped in those seeds' means. NaN when a draw has no scored letter at all."""
    diff_SL = diff_SL[:, ~np.isnan(diff_SL).all(axis=0)]
    if diff_SL.size == 0:
        return math.nan, math.nan

    def mean_over_seeds_and_letters(seed_idx, letter_idx, axis=-1):
        draws = diff_SL[seed_idx.astype(np.intp)[..., :, None], letter_idx.astype(np.intp)[..., None, :]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a seed whose drawn letters are all unscored
            return np.nanmean(np.nanmean(draws, axis=-1), axis=-1)

    n_s, n_l = diff_SL.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # identical draws: a zero-width interval
        res = stats.bootstrap((np.arange(n_s), np.arange(n_l)), mean_over_seeds_and_letters, n_resamples=n_boot,
                              batch=500, vectorized=True, paired=False, confidence_level=CONFIDENCE,
                              method="percentile", rng=rng)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


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
