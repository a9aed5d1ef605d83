"""Analysis plots of a run, each drawn from the results table or the SAEs' training artifacts.

Every function writes one PNG and returns its path, or None when the run has no data for it (e.g.
a baseline trainer records no splits); the report says which plots are missing and why.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from eval.absorption.metrics import LETTERS  # noqa: E402
from eval.results import summary_metrics, with_l0_point  # noqa: E402
from fc_base.sae_folder import read_train_log  # noqa: E402


def _save(fig, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    """Lay out (panels inside ``rect``, figure fractions), write and close the figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def last_fc_snapshot(sae_dir: Path) -> pd.DataFrame | None:
    """The last tracker snapshot (latent, frequency, consistency, absorption_score) of an SAE."""
    path = sae_dir / "fc_history.parquet"
    if not path.is_file():
        return None
    hist = pd.read_parquet(path, columns=["step", "latent", "frequency", "consistency", "absorption_score"])
    if hist.empty:
        return None
    return hist[hist["step"] == hist["step"].max()]


def fc_scatter(sae_dirs: list[Path], out: Path) -> Path | None:
    """Frequency vs consistency per latent (last snapshot), one panel per SAE, with contours of the
    absorption score s = f * (1 - c)."""
    snaps = [(d.name, s) for d in sae_dirs if (s := last_fc_snapshot(d)) is not None]
    if not snaps:
        return None
    cols = min(3, len(snaps))
    rows = -(-len(snaps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    f_max = max(float(s["frequency"].max()) for _, s in snaps) * 1.05 or 1.0
    f_grid, c_grid = np.meshgrid(np.linspace(0, f_max, 200), np.linspace(0, 1, 200))
    for ax, (name, snap) in zip(axes.flat, snaps):
        contours = ax.contour(f_grid, c_grid, f_grid * (1 - c_grid), levels=6, colors="grey", linewidths=0.6)
        ax.clabel(contours, fontsize=6, fmt="s=%.2g")
        ax.scatter(snap["frequency"], snap["consistency"], s=3, alpha=0.5, c=snap["absorption_score"], cmap="viridis")
        ax.set(title=f"{name} (step {int(snap['step'].iloc[0])})", xlabel="frequency f", ylabel="consistency c",
               xlim=(0, f_max), ylim=(0, 1.02))
    for ax in list(axes.flat)[len(snaps):]:
        ax.axis("off")
    return _save(fig, out)


def representative(sae_dirs: list[Path], limit: int = 9) -> list[Path]:
    """The SAEs per-SAE plots show: seed 0 of each trainer (and L0 point) first, at most ``limit``."""
    first = [d for d in sae_dirs if d.name.endswith("_s0")]
    rest = [d for d in sae_dirs if d not in first]
    return (first + rest)[:limit]


def absorbing_scatter(run_dir: Path, sae_dirs: list[Path], out: Path) -> Path | None:
    """The frequency/consistency analysis on real data: f vs c per latent (last tracker snapshot), with
    the latents sae-bench's absorption eval named: absorbing (red) and main first-letter latents (blue)."""
    panels = []
    for d in sae_dirs:
        task = Path(run_dir) / "eval" / d.name / "absorption.json"
        snap = last_fc_snapshot(d)
        if snap is None or not task.is_file():
            continue
        details = json.loads(task.read_text()).get("details", {})
        if "absorbing_latents" in details:
            panels.append((d.name, snap, details["absorbing_latents"], details["main_latents"]))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, snap, absorbing, main) in zip(axes.flat, panels):
        snap = snap.set_index("latent")
        ax.scatter(snap["frequency"], snap["consistency"], s=2, alpha=0.3, color="grey", label="other")
        for ids, color, label in ((absorbing, "tab:red", "absorbing"), (main, "tab:blue", "main first-letter")):
            hit = snap.loc[snap.index.intersection(ids)]
            ax.scatter(hit["frequency"], hit["consistency"], s=7, color=color, label=f"{label} ({len(hit)})")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set(title=name, xlabel="frequency f", ylabel="consistency c", ylim=(0, 1.02))
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return _save(fig, out)


def detection_bars(table: pd.DataFrame, out: Path) -> Path | None:
    """ROC AUC of each tracker statistic at picking out the latents an eval named (absorbing latents in
    sae-bench's task, absorbed parents on ground truth), last snapshot; mean ± std over SAEs per trainer."""
    ok = table[(table["status"] == "ok") & table["metric"].str.match(r"^detect_auc_[a-z_]+$")]
    if ok.empty:
        return None
    ok = ok.assign(name=ok["eval"] + ": " + ok["metric"].str.removeprefix("detect_auc_"))
    stats = ok.groupby(["name", "trainer"])["value"].agg(["mean", "std"]).reset_index()
    names = sorted(stats["name"].unique())
    trainers = sorted(stats["trainer"].unique())[:6]
    # at most 12 inches wide: a wider figure, scaled down to the page, would leave the bars a sliver high
    fig, ax = plt.subplots(figsize=(min(12.0, max(6.0, 0.5 * len(names) * max(1, len(trainers)) / 2)), 4.0))
    width = 0.8 / len(trainers)
    x = np.arange(len(names))
    for i, trainer in enumerate(trainers):
        part = stats[stats["trainer"] == trainer].set_index("name").reindex(names)
        ax.bar(x + i * width, part["mean"], width, yerr=part["std"].fillna(0.0), capsize=2, label=trainer)
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(x + 0.4 - width / 2, names, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="ROC AUC (0.5 = chance)", ylim=(0, 1))
    ax.legend(fontsize=6)
    return _save(fig, out)


def score_histograms(sae_dirs: list[Path], out: Path) -> Path | None:
    """Histogram of absorption scores s (last snapshot) per SAE, overlaid."""
    snaps = [(d.name, s) for d in sae_dirs if (s := last_fc_snapshot(d)) is not None]
    if not snaps:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    top = max(float(s["absorption_score"].max()) for _, s in snaps) or 1.0
    bins = np.linspace(0, top, 50)
    for name, snap in snaps:
        ax.hist(snap["absorption_score"], bins=bins, histtype="step", label=name, log=True)
    ax.set(xlabel="absorption score s = f (1 - c)", ylabel="latents", title="absorption scores (last snapshot)")
    ax.legend(fontsize=7)
    return _save(fig, out)


def split_events(sae_dirs: list[Path], out: Path) -> Path | None:
    """Cumulative number of FC splits over training steps per SAE."""
    series = []
    for d in sae_dirs:
        path = d / "splits.parquet"
        if path.is_file():
            steps = pd.read_parquet(path, columns=["step"])["step"]
            if not steps.empty:
                counts = steps.value_counts().sort_index()
                series.append((d.name, counts.index.to_numpy(), counts.cumsum().to_numpy()))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, steps, total in series:
        ax.step(steps, total, where="post", label=name)
    ax.set(xlabel="training step", ylabel="splits so far", title="split events over training")
    ax.legend(fontsize=7)
    return _save(fig, out)


def letter_table(table: pd.DataFrame, metric: str = "absorption_fraction") -> pd.DataFrame:
    """Per-letter absorption, trainer x letter, mean over seeds (from the results table).

    Letters whose ground-truth probe missed sae-bench's F1 bar are left empty, as sae-bench leaves
    them out of its means."""
    rows = table[(table["status"] == "ok") & (table["eval"] == "absorption")
                 & table["metric"].str.startswith("letter/")]
    if rows.empty:
        return pd.DataFrame()
    parts = rows["metric"].str.split("/")
    rows = rows.assign(letter=parts.str[1], kind=parts.str[2])
    min_f1 = rows["eval_config"].map(lambda c: json.loads(c).get("absorption_min_probe_f1", 0.6))
    passed = rows[(rows["kind"] == "probe_f1") & (rows["value"] > min_f1)][["sae", "letter"]]
    values = rows[rows["kind"] == metric].merge(passed, on=["sae", "letter"])
    if values.empty:
        return pd.DataFrame()
    return values.pivot_table(index="trainer", columns="letter", values="value", aggfunc="mean").reindex(
        columns=list(LETTERS))


def absorption_per_letter(table: pd.DataFrame, out: Path) -> Path | None:
    """Grouped bars: mean absorption fraction per first letter, one bar per trainer (mean over seeds)."""
    per_letter = letter_table(table)
    if per_letter.empty:
        return None
    fig, ax = plt.subplots(figsize=(11, 3.8))
    width = 0.8 / len(per_letter)
    x = np.arange(26)
    for i, (trainer, values) in enumerate(per_letter.iterrows()):
        ax.bar(x + i * width - 0.4 + width / 2, values.to_numpy(dtype=float), width, label=trainer)
    ax.set_xticks(x, list(LETTERS))
    ax.set(ylabel="absorption fraction", title="absorption per first letter (lower is better)")
    ax.legend(fontsize=7)
    return _save(fig, out)


SUMMARY_METRICS = ("absorption:mean_absorption_fraction_score", "absorption:mean_full_absorption_score",
                   "core:explained_variance_legacy", "core:ce_loss_score",
                   "synthetic:absorption_rate", "synthetic:f1", "synthetic:explained_variance")
"""Headline metrics of the summary plot (sae-bench's ``explained_variance`` reads ~1.0 for every SAE on
models with huge residual norms such as Gemma; its legacy definition still separates them)."""


def _spread(table: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """(name, trainer, k) -> mean and std over seeds, and the mean eval noise where reported."""
    summary = summary_metrics(table)
    summary = with_l0_point(summary).assign(name=summary["eval"] + ":" + summary["metric"])
    noise = summary[summary["metric"].str.endswith("_eval_std")]
    noise = noise.assign(name=noise["name"].str.removesuffix("_eval_std"))
    summary = summary[summary["name"].isin(names)]
    if summary.empty:
        return pd.DataFrame()
    stats = summary.groupby(["name", "trainer", "k"])["value"].agg(["mean", "std"])
    eval_std = noise[noise["name"].isin(names)].groupby(["name", "trainer", "k"])["value"].mean().rename("eval_std")
    return stats.join(eval_std, how="left").reset_index()


def summary_bars(table: pd.DataFrame, out: Path, metrics: tuple[str, ...] = SUMMARY_METRICS) -> Path | None:
    """Headline metrics per trainer (and k): mean over seeds; black bars: seed std, orange: eval noise."""
    stats = _spread(table, metrics)
    if stats.empty:
        return None
    names = [m for m in metrics if m in set(stats["name"])]
    multi_k = stats.loc[stats["k"] >= 0, "k"].nunique() > 1
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes.flat, names):
        part = stats[stats["name"] == name].sort_values(["k", "trainer"])
        labels = [f"{t}@k{k}" if multi_k and k >= 0 else t for t, k in zip(part["trainer"], part["k"])]
        x = np.arange(len(part))
        ax.bar(x, part["mean"], color="tab:blue", alpha=0.8)
        ax.errorbar(x - 0.12, part["mean"], yerr=part["std"].fillna(0.0), fmt="none", ecolor="black", capsize=3,
                    label="seed std")
        if part["eval_std"].notna().any():
            ax.errorbar(x + 0.12, part["mean"], yerr=part["eval_std"].fillna(0.0), fmt="none", ecolor="tab:orange",
                        capsize=3, label="eval std")
        ax.set_xticks(x, labels, fontsize=6, rotation=60, ha="right")
        ax.set_title(name.split(":")[1], fontsize=8)
        lo, hi = (part["mean"] - part["std"].fillna(0)).min(), (part["mean"] + part["std"].fillna(0)).max()
        if name.endswith(("explained_variance_legacy", "ce_loss_score", "explained_variance")) and lo > 0.5:
            ax.set_ylim(lo - 0.2 * (hi - lo + 1e-3), hi + 0.2 * (hi - lo + 1e-3))  # the gaps, not the bars' bulk
    axes.flat[0].legend(fontsize=6)
    return _save(fig, out)


FRONTIER_METRICS = ("absorption:mean_absorption_fraction_score", "absorption:mean_full_absorption_score",
                    "core:explained_variance_legacy", "core:ce_loss_score")
"""SAE-Bench's frontier panels, in its order. Explained variance is the headline one of pipeline/analysis/headline.py
(the legacy definition): sae-bench's raw ``explained_variance`` reads ~1 for every SAE on Gemma."""
SYNTHETIC_FRONTIER_METRICS = ("synthetic:absorption_rate", "synthetic:fully_absorbed_fraction",
                              "synthetic:explained_variance", "synthetic:f1")
"""The panels of a synthetic run, which has no sae-bench evals."""
L0_EVALS = ("core", "synthetic")
"""Evals whose ``l0`` row is the SAE's measured L0, in order of preference."""


def measured_l0(table: pd.DataFrame) -> pd.DataFrame:
    """Per SAE (trainer, L0 point k, seed) the L0 an eval measured on held-out tokens: the core
    eval's, else the synthetic eval's (column ``l0``).

    BatchTopK and Matryoshka SAEs fire a different number of latents at inference than their k, so a
    frontier must place them where they really are."""
    ok = with_l0_point(table[(table["status"] == "ok") & (table["metric"] == "l0")])
    per_eval = ok.pivot_table(index=["trainer", "k", "seed"], columns="eval", values="value", aggfunc="first")
    l0 = pd.Series(math.nan, index=per_eval.index, dtype="float64")
    for ev in reversed(L0_EVALS):  # the preferred eval last, so its value wins
        if ev in per_eval:
            l0 = per_eval[ev].combine_first(l0)
    return l0.rename("l0").reset_index()


def frontier_data(table: pd.DataFrame, metrics: tuple[str, ...] = FRONTIER_METRICS) -> pd.DataFrame:
    """One row per (metric name, trainer, L0 point k): the mean over seeds (``mean``), the seed std
    (``std``), the mean of the SAEs' own eval noise (``eval_std``, NaN where the eval reports none),
    and the x position: the measured L0, mean and std over the trainer's seeds at that point (``l0``,
    ``l0_std``; ``l0_measured`` False where no eval measured it and ``l0`` is the target k)."""
    stats = _spread(table, metrics)
    if stats.empty:
        return stats
    stats = stats[stats["k"] >= 0]
    x = measured_l0(table).groupby(["trainer", "k"])["l0"].agg(l0="mean", l0_std="std").reset_index()
    stats = stats.merge(x, on=["trainer", "k"], how="left")
    measured = stats["l0"].notna()
    return stats.assign(l0=stats["l0"].where(measured, stats["k"].astype(float)), l0_measured=measured)


def _dodge(points: pd.DataFrame, order: list[str]) -> pd.Series:
    """x factor per row: points of different trainers within 1.4% of each other in L0 (TopK variants
    all sit exactly at k) are spread over at most +-4%, so no point hides another."""
    cluster = (np.log2(points["l0"]) * 50).round()
    rank = points["trainer"].map({t: i for i, t in enumerate(order)})
    within = rank.groupby(cluster).rank(method="first") - 1
    size = cluster.map(cluster.value_counts())
    step = np.minimum(0.015, 0.12 / np.maximum(size - 1, 1))  # in log2 units: 9 trainers span +-0.06
    return 2.0 ** (step * (within - (size - 1) / 2))


def _panel_title(name: str) -> str:
    """'absorption fraction ↓': the headline label and direction of an eval:metric name."""
    from pipeline.analysis.headline import ARROWS, HEADLINES

    labels = {f"{h.eval}:{h.metric}": f"{h.label} {ARROWS[h.direction]}".strip() for h in HEADLINES}
    return labels.get(name, name.split(":")[1])


def _frontier_axis(ax, part: pd.DataFrame) -> bool:
    """Log2 L0 axis over a wide range of L0 (several targets), linear around one point; True if log."""
    lo, hi = float(part["l0"].min()), float(part["l0"].max())
    if hi / lo > 1.5:
        ax.set_xscale("log", base=2)
        ticks = [2 ** e for e in range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1)]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlim(lo / 1.25, hi * 1.25)
        return True
    pad = max(0.3 * (hi - lo), 0.015 * hi)  # equal-L0 SAEs: the axis still shows how close they are
    ax.set_xlim(lo - pad, hi + pad)
    return False


def frontier(table: pd.DataFrame, out: Path, metrics: tuple[str, ...] | None = None,
             baseline: str = "topk") -> Path | None:
    """SAE-Bench-style frontier: each metric against the measured L0 (:func:`frontier_data`), one line
    per trainer through its L0 points. Error bars: the seed std, wide and light in the line's colour (in
    y, and in x for the L0 itself), and the eval's own noise, thin and black. Default panels: sae-bench's
    (:data:`FRONTIER_METRICS`), or the synthetic eval's in a run without them."""
    stats = frontier_data(table, metrics or FRONTIER_METRICS)
    if stats.empty and metrics is None:
        stats = frontier_data(table, SYNTHETIC_FRONTIER_METRICS)
    if stats.empty:
        return None
    names = [m for m in (metrics or FRONTIER_METRICS + SYNTHETIC_FRONTIER_METRICS) if m in set(stats["name"])]
    trainers = sorted(set(stats["trainer"]), key=lambda t: (t != baseline, t))  # the baseline gets the first colour
    # one colour per trainer (beyond 10 trainers the default cycle would repeat) and one legend below
    # the panels, where it hides no point
    tab20 = plt.get_cmap("tab20")
    palette = [tab20(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]  # the ten strong colours first
    colour = {t: palette[i % len(palette)] for i, t in enumerate(trainers)}
    cols = 2 if len(names) > 2 else len(names)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        _frontier_panel(ax, stats[stats["name"] == name], trainers, colour)
        ax.set_title(_panel_title(name), fontsize=10)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    handles += [plt.Line2D([], [], color="grey", alpha=0.45, linewidth=4),
                plt.Line2D([], [], color="black", linewidth=0.8)]
    labels += ["seed std (wide, light, the trainer's colour)", "eval noise (thin, black)"]
    ncol = min(len(labels), 4)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    legend_inches = 0.2 * math.ceil(len(labels) / ncol) + 0.1
    return _save(fig, out, rect=(0, legend_inches / fig.get_figheight(), 1, 1))


def _frontier_panel(ax, part: pd.DataFrame, trainers: list[str], colour: dict) -> None:
    """One metric: a line per trainer through its L0 points, with seed and eval-noise error bars."""
    log_axis = _frontier_axis(ax, part)
    part = part.assign(x=part["l0"] * (_dodge(part, trainers) if log_axis else 1.0))
    for i, trainer in enumerate(trainers):
        line = part[part["trainer"] == trainer].sort_values("l0")
        if line.empty:
            continue
        bars = ax.errorbar(line["x"], line["mean"], yerr=line["std"].fillna(0.0), xerr=line["l0_std"].fillna(0.0),
                           marker="os^Dv"[i % 5], markersize=4, linewidth=1, capsize=3, elinewidth=4,
                           label=trainer, color=colour[trainer])
        for part_of_bar in (*bars[1], *bars[2]):  # light seed bars: the black eval-noise bar shows on top
            part_of_bar.set_alpha(0.45)
        if line["eval_std"].notna().any():
            ax.errorbar(line["x"], line["mean"], yerr=line["eval_std"].fillna(0.0), fmt="none",
                        ecolor="black", elinewidth=0.8, capsize=0, zorder=3)
    measured = bool(part["l0_measured"].all())
    ax.set_xlabel("measured L0 (mean over seeds)" if measured else "L0 (measured; the target k where not)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


HELDOUT_CURVES = {"mse": "heldout_mse", "l0": "heldout_l0", "explained_variance": "heldout_explained_variance"}
"""train_log.jsonl's held-out scores (train.heldout_rows), drawn dashed on the panel of their training
counterpart; the held-out dead fraction (latents that fire on none of the rows) has a panel of its own."""
HELDOUT_DEAD = "heldout_dead_frac"


def training_curve_lines(logs: list[tuple[str, "pd.DataFrame"]]) -> dict[str, list[tuple[str, str, bool]]]:
    """Per panel of the training curves, its lines: (SAE, train_log column, held-out?)."""
    panels: dict[str, list[tuple[str, str, bool]]] = {}
    for key in ("loss", "mse", "l0", "explained_variance", "frac_alive"):
        lines = [(name, key, False) for name, log in logs if key in log]
        lines += [(name, HELDOUT_CURVES[key], True) for name, log in logs
                  if key in HELDOUT_CURVES and HELDOUT_CURVES[key] in log]
        if lines:
            panels[key] = lines
    dead = [(name, HELDOUT_DEAD, True) for name, log in logs if HELDOUT_DEAD in log]
    if dead:
        panels["dead fraction"] = dead
    return panels


def training_curves(sae_dirs: list[Path], out: Path) -> Path | None:
    """Loss, MSE, L0, explained variance and alive fraction over training, one line per SAE; the
    held-out scores of SAEs trained with held-out rows dashed beside them."""
    logs = [(d.name, log) for d in sae_dirs if (log := read_train_log(d)) is not None and "step" in log]
    if not logs:
        return None
    panels = training_curve_lines(logs)
    by_name = dict(logs)
    colours = {name: f"C{i % 10}" for i, (name, _) in enumerate(logs)}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.2), squeeze=False)
    for ax, (key, lines) in zip(axes.flat, panels.items()):
        for name, column, heldout in lines:
            log = by_name[name]
            label = f"{name} ({column.replace('_', ' ')})" if heldout else name
            ax.plot(log["step"], log[column], label=label, linewidth=1, color=colours[name],
                    linestyle="--" if heldout else "-")
        ax.set(title=key if not any(h for *_, h in lines) else f"{key} (dashed: held-out)", xlabel="step")
        if key in ("loss", "mse"):
            ax.set_yscale("log")
        if any(h for *_, h in lines):
            ax.legend(fontsize=5)
    axes.flat[0].legend(fontsize=6)
    return _save(fig, out)


SYNTHETIC_HEADLINE = (  # (metric of the synthetic eval, direction)
    ("f1", "higher"), ("mcc", "higher"), ("explained_variance", "higher"), ("l0", ""),
    ("absorption_rate", "lower"), ("fully_absorbed_fraction", "lower"), ("decoder_absorption", "lower"),
    ("detect_auc_absorption_score", "higher"), ("detect_auc_frequency", "higher"),
    ("detect_auc_inconsistency", "higher"))


def synthetic_trainer_stats(table: pd.DataFrame) -> pd.DataFrame:
    """metric x trainer of the synthetic eval's headline metrics: mean, std and seeds."""
    rows = table[(table["eval"] == "synthetic") & (table["status"] == "ok")]
    rows = rows[rows["metric"].isin([m for m, _ in SYNTHETIC_HEADLINE])]
    if rows.empty:
        return pd.DataFrame()
    return rows.groupby(["metric", "trainer"])["value"].agg(["mean", "std", "count"]).unstack("trainer")


def absorption_by_depth(table: pd.DataFrame, out: Path) -> Path | None:
    """Synthetic absorption_rate per hierarchy depth, per trainer (mean over seeds, error bars: std)."""
    rows = table[(table["eval"] == "synthetic") & (table["status"] == "ok")
                 & table["metric"].str.match(r"^absorption_rate/depth\d+$")]
    if rows.empty:
        return None
    rows = rows.assign(depth=rows["metric"].str.extract(r"depth(\d+)$")[0].astype(int))
    stats = rows.groupby(["trainer", "depth"])["value"].agg(["mean", "std"]).reset_index()
    trainers = sorted(stats["trainer"].unique())
    depths = sorted(stats["depth"].unique())
    width = 0.8 / len(trainers)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(depths) * len(trainers) * 0.35 + 3), 3.6))
    for i, trainer in enumerate(trainers):
        part = stats[stats["trainer"] == trainer].set_index("depth").reindex(depths)
        ax.bar(np.arange(len(depths)) + i * width, part["mean"], width, yerr=part["std"].fillna(0.0), capsize=2,
               label=trainer)
    ax.set_xticks(np.arange(len(depths)) + width * (len(trainers) - 1) / 2, [f"depth {d}" for d in depths])
    ax.set(ylabel="share of parent carried by child latents",
           title="synthetic absorption by hierarchy depth of the parent (lower is better)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out)
