"""RESULTS.md, generated from results tables only (no hand-typed numbers): the commands, the noise
floor, the headline tables, every FC arm against the baseline and against its random-surgery control,
the tracker statistics' detection quality, and a verdict worded from the intervals.

The output is a pure function of the tables (no dates, no machine names), so regenerating it from the
committed tables gives the same file."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from eval.results import with_l0_point
from fc_base.io import write_text_atomic
from pipeline.analysis.compare import EVAL_STD_SUFFIX, paired_comparison
from pipeline.analysis.headline import LEGEND, headline_markdown
from pipeline.analysis.headline import fmt_number as _fmt
from pipeline.analysis.headline import interval_text as _interval


@dataclass(frozen=True)
class Study:
    """One results table and how to read it."""

    title: str
    table: pd.DataFrame
    source: str
    """Path of the table as the command line names it."""
    command: str
    """The command that produced the table."""
    eval: str
    primary: str
    """Absorption metric the verdict is about (lower is better)."""
    reconstruction: str
    """Reconstruction metric that must not get worse (higher is better)."""
    reconstruction_eval: str
    """The eval that reports ``reconstruction`` (and ``l0`` where it reports one)."""
    plot: str | None = None
    """Frontier plot written beside RESULTS.md (relative path), if the table has several L0s."""


def controls_in(table: pd.DataFrame) -> dict[str, str]:
    """FC arm -> its random-surgery control, for the arms whose control is in the table."""
    from trainers.training.recipe import RECIPES

    have = set(table["trainer"])
    return {name: recipe.control for name in sorted(have)
            if name in RECIPES.names() and (recipe := RECIPES.get(name)).control in have}


def _row(cmp: pd.DataFrame, trainer: str, k: int, metric: str) -> pd.Series | None:
    if cmp.empty:  # e.g. a run without the reconstruction eval
        return None
    hit = cmp[(cmp["trainer"] == trainer) & (cmp["k"] == k) & (cmp["metric"] == metric)]
    return None if hit.empty else hit.iloc[0]


def _side(r: pd.Series | None) -> int:
    """-1: interval below 0, +1: above 0, 0: contains 0 or no interval."""
    if r is None or math.isnan(r["ci_low"]):
        return 0
    return -1 if r["ci_high"] < 0 else (1 if r["ci_low"] > 0 else 0)


RECONSTRUCTION_TOLERANCE = 0.01
"""A reconstruction loss larger than this (interval entirely below -tolerance) is called a cost."""
L0_TOLERANCE = 0.03
"""Measured L0 more than 3% away from the baseline's: the comparison is not at equal L0."""


def _caveats(other: pd.DataFrame, trainer: str, k: int, study: Study, baseline: str) -> str:
    """Reconstruction and L0 beside an absorption verdict (``other``: the paired comparison of the
    reconstruction metric and l0): absorption alone can be bought by a worse SAE."""
    parts = []
    rec = _row(other, trainer, k, study.reconstruction)
    if rec is not None and rec["n_pairs"]:
        cost = not math.isnan(rec["ci_high"]) and rec["ci_high"] < -RECONSTRUCTION_TOLERANCE
        parts.append(f"{study.reconstruction} Δ {_interval(rec)}" + (" — **a reconstruction cost**" if cost else ""))
    own, base = _row(other, trainer, k, "l0"), _row(other, baseline, k, "l0")
    if own is not None and base is not None and base["mean"] > 0 and abs(own["mean"] / base["mean"] - 1) > L0_TOLERANCE:
        parts.append(f"**not at equal L0**: measured L0 {own['mean']:.1f} vs {base['mean']:.1f}")
    return "; ".join(parts)


def _one_seed(r: pd.Series, ref: pd.Series | None, name: str) -> str:
    """A one-pair difference set against the eval's own noise of the two SAEs (there is no spread
    over seeds to build an interval from)."""
    noise = math.hypot(r["eval_std"], ref["eval_std"]) if ref is not None else math.nan
    if math.isnan(noise):
        return f"Δ {r['diff']:+.3f} vs `{name}` (no eval noise to compare with)"
    side = "beyond" if abs(r["diff"]) > 2 * noise else "within"
    return f"Δ {r['diff']:+.3f} vs `{name}`, {side} twice the eval's own noise (± {noise:.3f})"


ONE_SEED_NOTE = "one seed: the spread over seeds is not measured (train.seeds=[0,1,2] tests it)"


OTHER_BASELINES = ("matryoshka", "batchtopk", "relu_l1")
"""Architectures without FC surgery that the verdict also sets against the baseline, at each L0."""


def verdicts(study: Study, baseline: str = "topk") -> list[str]:
    """One plain sentence per FC arm and L0 (and one per other baseline architecture), worded from the
    intervals, with the reconstruction change and any L0 mismatch beside it."""
    vs_base = paired_comparison(study.table, [study.primary], baseline, study.eval)
    if vs_base.empty:
        return ["No rows for this eval."]
    other = paired_comparison(study.table, [study.reconstruction, "l0"], baseline, study.reconstruction_eval)
    lines = []
    for arm, control in controls_in(study.table).items():
        vs_ctl = paired_comparison(study.table[study.table["trainer"].isin([arm, control])], [study.primary],
                                   control, study.eval)
        for k in sorted(vs_base.loc[vs_base["trainer"] == arm, "k"].unique()):
            a, c = _row(vs_base, arm, k, study.primary), _row(vs_ctl, arm, k, study.primary)
            if a is None:
                continue
            kk = "" if k < 0 else f" at k={k}"
            caveat = _caveats(other, arm, k, study, baseline)
            if a["n_pairs"] == 1:
                parts = [_one_seed(a, _row(vs_base, baseline, k, study.primary), baseline)]
                if c is not None and c["n_pairs"] == 1:
                    parts.append(_one_seed(c, _row(vs_ctl, control, k, study.primary), control))
                lines.append(f"- `{arm}`{kk}, {ONE_SEED_NOTE}: {study.primary} {'; '.join(parts)}"
                             f"{'; ' + caveat if caveat else ''}.")
                continue
            if a["n_pairs"] == 0:
                word = (f"has no L0-matched `{baseline}` to compare with; against its control it "
                        + ("changes absorption beyond the noise" if _side(c) else "does not change absorption beyond the noise"))
            elif _side(a) < 0 and _side(c) < 0:
                word = "lowers absorption beyond both the baseline's and its control's noise"
            elif _side(a) < 0:
                word = ("lowers absorption against the baseline but not against its control: the gain belongs "
                        "to the surgery, not to the statistic")
            elif _side(a) > 0:
                word = "raises absorption"
            else:
                word = "does not change absorption beyond the noise"
            ctl = f"vs `{control}` Δ {_interval(c)}" if c is not None else ""
            base = f"vs `{baseline}` Δ {_interval(a)}, " if a["n_pairs"] else ""
            lines.append(f"- `{arm}`{kk} {word} ({study.primary} {base}{ctl}){'; ' + caveat if caveat else ''}.")
    for other_arch in OTHER_BASELINES:
        for k in sorted(vs_base.loc[vs_base["trainer"] == other_arch, "k"].unique()):
            m = _row(vs_base, other_arch, k, study.primary)
            if m is None or not m["n_pairs"]:
                continue
            kk = "" if k < 0 else f" at k={k}"
            caveat = _caveats(other, other_arch, k, study, baseline)
            if m["n_pairs"] == 1:
                lines.append(f"- `{other_arch}`{kk}, {ONE_SEED_NOTE}: {study.primary} "
                             f"{_one_seed(m, _row(vs_base, baseline, k, study.primary), baseline)}"
                             f"{'; ' + caveat if caveat else ''}.")
                continue
            word = {-1: "lower", 1: "higher", 0: "not different beyond the noise"}[_side(m)]
            lines.append(f"- `{other_arch}`{kk}: absorption {word} than `{baseline}` ({study.primary} Δ "
                         f"{_interval(m)}){'; ' + caveat if caveat else ''}.")
    return lines or ["No FC arm with its control in this table."]


def noise_floor(table: pd.DataFrame, eval_name: str) -> str:
    """Per metric: the eval's own noise (median over SAEs of the spread over probe seeds) beside the
    seed spread (median over trainer x k groups of the std over training seeds)."""
    ok = table[(table["status"] == "ok") & (table["eval"] == eval_name)]
    noise = ok[ok["metric"].str.endswith(EVAL_STD_SUFFIX)]
    if noise.empty:
        return "This table has no per-SAE eval-noise rows.\n"
    lines = ["| metric | eval std per SAE (median) | seed std per trainer and k (median) | SAEs | groups |",
             "|---|---|---|---|---|"]
    for metric in sorted(noise["metric"].unique()):
        base = metric.removesuffix(EVAL_STD_SUFFIX)
        per_sae = noise.loc[noise["metric"] == metric, "value"]
        vals = with_l0_point(ok[ok["metric"] == base])
        seed_std = vals.groupby(["trainer", "k"])["value"].std(ddof=1).dropna()
        lines.append(f"| {base} | {_fmt(float(per_sae.median()))} | {_fmt(float(seed_std.median()) if len(seed_std) else math.nan)}"
                     f" | {len(per_sae)} | {len(seed_std)} |")
    return "\n".join(lines) + "\n"


def control_table(study: Study) -> str:
    """Each FC arm against its control at each k, paired by seed, for the primary and reconstruction metrics."""
    rows = []
    for arm, control in controls_in(study.table).items():
        pair = study.table[study.table["trainer"].isin([arm, control])]
        cmp = pd.concat([paired_comparison(pair, [study.primary], control, study.eval),
                         paired_comparison(pair, [study.reconstruction], control, study.reconstruction_eval)])
        for k in sorted(cmp.loc[cmp["trainer"] == arm, "k"].unique()):
            cells = []
            for metric in (study.primary, study.reconstruction):
                r = _row(cmp, arm, k, metric)
                cells.append("–" if r is None or r["n_pairs"] == 0 else f"{_interval(r)} (n={int(r['n_pairs'])})")
            rows.append(f"| `{arm}` | `{control}` | {'–' if k < 0 else k} | " + " | ".join(cells) + " |")
    if not rows:
        return "No FC arm with its control in this table.\n"
    return (f"| arm | control | k | Δ {study.primary} | Δ {study.reconstruction} |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")


def detection_table(table: pd.DataFrame, eval_name: str) -> str:
    """ROC AUC of each tracker statistic, mean ± std over SAEs: TopK at the end of training and at
    25/50/75% of it, and the other baselines at the end (0.5 = chance)."""
    ok = table[(table["status"] == "ok") & (table["eval"] == eval_name) & table["metric"].str.startswith("detect_auc_")]
    if ok.empty:
        return "No detection rows (the SAEs have no tracker history).\n"
    ok = ok.assign(stat=ok["metric"].str.removeprefix("detect_auc_").str.split("@").str[0],
                   at=ok["metric"].str.split("@").str[1].fillna("end"))
    stats = ok.groupby(["stat", "trainer", "at"])["value"].agg(["mean", "std", "count"])
    columns = [("topk", at) for at in ("25", "50", "75", "end")]
    columns += [(t, "end") for t in OTHER_BASELINES if t in set(ok["trainer"])]
    columns = [c for c in columns if any((s, *c) in stats.index for s in ok["stat"].unique())]
    head = " | ".join(f"{t} {'end' if at == 'end' else at + '%'}" for t, at in columns)
    lines = [f"| statistic | {head} |", "|---|" + "---|" * len(columns)]
    for stat in sorted(ok["stat"].unique()):
        cells = []
        for t, at in columns:
            if (stat, t, at) in stats.index:
                r = stats.loc[(stat, t, at)]
                cells.append(f"{_fmt(r['mean'])} ± {_fmt(r['std'])} ({int(r['count'])})")
            else:
                cells.append("–")
        lines.append(f"| {stat} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _section(study: Study, out_dir: Path) -> str:
    from pipeline.analysis import plots

    parts = [f"## {study.title}\n", f"Table: `{study.source}` (from `{study.command}`).\n",
             "### Verdict\n", "\n".join(verdicts(study)) + "\n"]
    if (study.table["metric"].str.endswith(EVAL_STD_SUFFIX)).any():
        parts += ["### Noise floor\n", noise_floor(study.table, study.eval)]
    parts += ["### Headline\n", LEGEND.format(baseline="topk") + "\n", headline_markdown(study.table)]
    parts += ["### FC arms against their random-surgery controls\n",
              "Δ: arm minus control, paired by seed, with the 95% interval.\n", control_table(study)]
    if study.plot:
        made = plots.frontier(study.table, out_dir / study.plot)
        if made is not None:
            parts += ["### L0 frontier\n", f"![frontier]({study.plot})\n"]
    parts += ["### Which tracker statistic picks out the latents the eval named\n",
              "ROC AUC of each statistic's last training snapshot (0.5: chance; below 0.5: it points the other way).\n",
              detection_table(study.table, study.eval)]
    return "\n".join(parts)


def render(studies: list[Study], out: Path, regenerate: str) -> str:
    """Write RESULTS.md (and its plots beside it); returns the text."""
    out = Path(out)
    head = ("# Results\n\nGenerated from the results tables below by one command; every number comes from "
            "them. Regenerate with:\n\n```\n" + regenerate + "\n```\n")
    text = head + "\n" + "\n".join(_section(s, out.parent) for s in studies)
    write_text_atomic(out, text)
    return text


RUN_COMMANDS = {
    "experiment": (
        "make run PRESET=experiment, then make run PRESET=experiment-extra RUN_DIR=runs/experiment (the "
        "thinned-out arms: BatchTopK and the other repair designs at k 32, ReLU+L1 at every L0)"),
    "experiment-float32": ("git checkout 8645147 && make run PRESET=experiment RUN_DIR=runs/experiment-float32 "
                           "(the earlier float32 preset: 66 SAEs, BatchTopK and the other repair designs at k 32)"),
    "experiment-f32-k32": ("fc-sae harvest|train|eval --config benchmarks/experiment_f32_k32.json --run-dir "
                           "runs/experiment-f32-k32 (float32 forward and training: TopK, BatchTopK and Matryoshka "
                           "at k 32, calibrated thresholds)"),
    "experiment-gpu": ("bash scripts/gpu_run.sh prepare|experiment|pack on a CUDA machine (see the script), "
                       "then fc-sae eval --preset experiment-gpu --run-dir runs/experiment-gpu"),
}
"""How each language-model run named in a table's ``run`` column was produced."""


def load_study(kind: str, path: str) -> Study:
    """A study of a table file: ``synthetic`` (ground truth) or ``language`` (sae-bench on an LLM)."""
    return study_of(kind, pd.read_parquet(path), path)


def study_of(kind: str, table: pd.DataFrame, path: str) -> Study:
    """A study of a table already in memory (``path``: where it is stored, for the commands)."""
    if kind == "synthetic":
        # Tables evaluated before the absorbed-or-lost share hold the earlier carried share (which an SAE
        # that loses its parents can win; docs/SYNTHETIC.md) under its own name: say which one is shown.
        metric = "absorption_rate" if (table["metric"] == "absorption_rate").any() else "carried_share"
        title = "Ground truth: synthetic hierarchy (synth-fc preset)"
        if metric == "carried_share":
            title += " - earlier metric: carried share, not the absorbed-or-lost share"
        return Study(title, table, path, "make run PRESET=synth-fc", "synthetic", metric, "explained_variance",
                     "synthetic")
    model = ", ".join(sorted(set(table["model"].astype(str))))
    run = ", ".join(sorted(set(table["run"].astype(str))))
    widths = ", ".join(str(w) for w in sorted(set(table["d_sae"].astype(int))))
    points = with_l0_point(table)["k"]
    several_k = points[points >= 0].nunique() > 1
    return Study(f"Language model: {model}, width {widths} (run {run})", table, path,
                 RUN_COMMANDS.get(run, f"make run PRESET={run}"), "absorption", "mean_absorption_fraction_score",
                 "explained_variance_legacy", "core", plot=f"docs/results/frontier_{run}.png" if several_k else None)


def run_verdicts(results_path: Path, table: pd.DataFrame, baseline: str = "topk") -> tuple[Study, list[str]]:
    """The study of one run's table (ground truth or language model, read from its evals) and its
    verdict sentences; no sentences when the study's eval has no rows."""
    kind = "synthetic" if ((table["eval"] == "synthetic") & (table["status"] == "ok")).any() else "language"
    study = study_of(kind, table, str(results_path))
    if not ((study.table["eval"] == study.eval) & (study.table["status"] == "ok")).any():
        return study, []
    return study, verdicts(study, baseline)
