"""The long results table (``run_dir/results.parquet``) and the per-task JSON files it is built from.

Every finished (SAE, eval) task is stored as ``run_dir/eval/<sae>/<eval>.json`` holding its rows;
:func:`aggregate` merges them into the Parquet table atomically (temp file + rename), so a killed
writer leaves the previous table intact and a re-run replaces only its own rows.
"""
from __future__ import annotations

import functools
import json
import math
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple

import pandas as pd

from fc_base.io import write_json_atomic, write_parquet_atomic

if TYPE_CHECKING:  # the table code stays free of torch/sae-bench imports (fast CLI, light writers)
    from fc_base.sae_folder import SAEMeta

RESULTS_FILE = "results.parquet"
COLUMNS = ("run", "sae", "trainer", "seed", "model", "layer", "hook", "d_sae", "k", "l0_target",
           "train_tokens", "eval", "metric", "value", "status", "error", "eval_config", "created_at")
STATUSES = ("ok", "failed", "skipped")
# Per-letter and other detail metrics carry a "/" in their name; the summary table leaves them out.
DETAIL_SEPARATOR = "/"
RECORDED_PACKAGES = ("sae-bench", "sae-lens", "torch", "transformers")
"""Packages whose versions every row's ``eval_config`` records (under ``packages``)."""
NAN_REASON = "the eval gave no value for this metric (NaN)"


class Skipped(NamedTuple):
    """An eval's value for a metric it could not compute, with the reason: the metric's row gets
    status ``skipped`` and the reason in ``error`` (a NaN value never passes as ``ok``)."""

    reason: str


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """Installed versions of :data:`RECORDED_PACKAGES` (``not installed`` where one is missing)."""
    out = {}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class ResultsError(ValueError):
    """The results table or a task file is missing or malformed."""


def task_path(run_dir: Path, sae: str, eval_name: str) -> Path:
    return Path(run_dir) / "eval" / sae / f"{eval_name}.json"


def make_rows(run_dir: Path, meta: "SAEMeta", eval_name: str, metrics: dict[str, Any], *,
              status: str = "ok", error: str = "", eval_config: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    """Rows of the long table for one task: one per metric, or a single row (metric '') for a
    failed or skipped task.

    In a finished task a metric whose value is :class:`Skipped`, NaN or not a number becomes a
    ``skipped`` row with the reason in ``error``. ``eval_config`` gains the installed versions of
    :data:`RECORDED_PACKAGES` under ``packages`` unless it already names them."""
    if status not in STATUSES:
        raise ResultsError(f"status must be one of {STATUSES}, got {status!r}")
    config = dict(eval_config or {})
    config.setdefault("packages", package_versions())
    base = {
        "run": Path(run_dir).resolve().name, "sae": meta.name, "trainer": meta.trainer, "seed": meta.seed,
        "model": meta.model_name, "layer": meta.layer, "hook": meta.hook_name, "d_sae": meta.d_sae,
        "k": meta.k, "l0_target": meta.l0_target, "train_tokens": meta.train_tokens, "eval": eval_name,
        "status": status, "error": error,
        "eval_config": json.dumps(config, sort_keys=True, default=str),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if status != "ok":
        return [{**base, "metric": "", "value": math.nan}]
    rows = []
    for name, value in metrics.items():
        number, reason = _value_or_reason(value)
        if reason:
            rows.append({**base, "metric": name, "value": math.nan, "status": "skipped", "error": reason})
        else:
            rows.append({**base, "metric": name, "value": number})
    return rows


def _value_or_reason(value: Any) -> tuple[float, str]:
    if isinstance(value, Skipped):
        return math.nan, value.reason or NAN_REASON
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan, f"the eval gave a value that is not a number: {str(value)[:80]!r}"
    return (number, "") if not math.isnan(number) else (math.nan, NAN_REASON)


def write_task(path: Path, rows: list[dict[str, Any]], details: dict[str, Any] | None = None) -> Path:
    """Store one task's rows (and optional details, e.g. per-letter tables) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"rows": rows, "details": details or {}}
    write_json_atomic(path, payload, indent=1, default=str, allow_nan=True)
    return path


def read_task(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"cannot read task file {path}: {e}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("rows"), list):
        raise ResultsError(f"task file {path} has no 'rows' list")
    return payload


def rows_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """A frame with exactly the table's columns and stable dtypes."""
    df = pd.DataFrame(list(rows), columns=list(COLUMNS))
    for col in ("seed", "layer", "d_sae", "train_tokens"):
        df[col] = df[col].astype("int64")
    for col in ("k",):
        df[col] = df[col].astype("Int64")
    for col in ("l0_target", "value"):
        df[col] = df[col].astype("float64")
    for col in ("run", "sae", "trainer", "model", "hook", "eval", "metric", "status", "error",
                "eval_config", "created_at"):
        df[col] = df[col].fillna("").astype(str)
    return df


def with_l0_point(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with an int ``k`` on every row, the L0 point it is compared at: the SAE's k, else the
    L0 target a penalty SAE's weight was calibrated for (``l0_target``), else -1 (no point)."""
    k = pd.to_numeric(table["k"], errors="coerce") if "k" in table else pd.Series(math.nan, index=table.index)
    if "l0_target" in table:
        k = k.astype("float64").fillna(pd.to_numeric(table["l0_target"], errors="coerce"))
    return table.assign(k=k.fillna(-1).round().astype(int))


def write_table(path: Path, df: pd.DataFrame) -> Path:
    """Write the table atomically: a temp file in the same folder, fsynced, then renamed over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_parquet_atomic(path, df)


def aggregate_tasks(run_dir: Path) -> Path:
    """Merge every task file under ``run_dir/eval`` into ``results.parquet``.

    Rows of the previous table for (sae, eval) pairs that have a task file are replaced; the others
    are kept, so re-running one eval never drops the rest of the table.
    """
    run_dir = Path(run_dir)
    task_rows: list[dict[str, Any]] = []
    for path in sorted((run_dir / "eval").glob("*/*.json")):
        task_rows.extend(read_task(path)["rows"])
    new = rows_frame(task_rows)
    out = run_dir / RESULTS_FILE
    if out.is_file():
        old = pd.read_parquet(out)
        fresh = set(zip(new["sae"], new["eval"]))
        keep = [pair not in fresh for pair in zip(old["sae"], old["eval"])]
        new = pd.concat([rows_frame(old[keep].to_dict("records")), new], ignore_index=True)
    new = new.sort_values(["sae", "eval", "metric"], kind="stable").reset_index(drop=True)
    return write_table(out, new)


# ---- reading -------------------------------------------------------------------------------

def load(run_dir: str | Path) -> pd.DataFrame:
    """The long results table of a run (raises a clear error when the run has none)."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        raise ResultsError(f"no results table at {path}: run `fc-sae eval --run-dir {run_dir}` first")
    return pd.read_parquet(path)


def summary_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Only ok rows of summary metrics (per-letter and other detail metrics left out)."""
    ok = df[(df["status"] == "ok") & ~df["metric"].str.contains(DETAIL_SEPARATOR, regex=False)]
    return ok


def pivot(df: pd.DataFrame, *, detail: bool = False) -> pd.DataFrame:
    """Trainer x metric: mean, std and seed count over seeds (columns are (eval/metric, stat))."""
    rows = df[df["status"] == "ok"] if detail else summary_metrics(df)
    rows = rows.assign(name=rows["eval"] + ":" + rows["metric"])
    table = rows.pivot_table(index="trainer", columns="name", values="value",
                             aggfunc=["mean", "std", "count"], dropna=False)
    return table.swaplevel(0, 1, axis=1).sort_index(axis=1)


def problems(df: pd.DataFrame) -> pd.DataFrame:
    """Failed and skipped tasks (whole (sae, eval) pairs) with their reasons."""
    return df[(df["status"] != "ok") & (df["metric"] == "")][["sae", "eval", "status", "error"]].reset_index(drop=True)


def skipped_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Single metrics of finished tasks that have no value (status ``skipped``), with their reasons."""
    rows = df[(df["status"] != "ok") & (df["metric"] != "")]
    return rows[["sae", "eval", "metric", "status", "error"]].reset_index(drop=True)


def format_table(df: pd.DataFrame) -> str:
    """Plain-text trainer x metric table (mean ± std over seeds) plus failed/skipped tasks."""
    lines: list[str] = []
    summary = summary_metrics(df)
    if summary.empty:
        lines.append("no successful eval results")
    else:
        stats = summary.groupby(["eval", "metric", "trainer"])["value"].agg(["mean", "std", "count"])
        trainers = sorted(summary["trainer"].unique())
        header = ["eval", "metric", *trainers]
        body = []
        for (eval_name, metric), grp in stats.groupby(level=[0, 1]):
            cells = [eval_name, metric]
            for trainer in trainers:
                key = (eval_name, metric, trainer)
                if key not in grp.index:
                    cells.append("-")
                    continue
                mean, std, n = grp.loc[key]
                spread = "" if n < 2 or math.isnan(std) else f" ± {std:.4g}"
                cells.append(f"{mean:.4g}{spread} (n={int(n)})")
            body.append(cells)
        widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in body)
    bad = problems(df)
    if not bad.empty:
        lines.append("")
        lines.append("not evaluated:")
        lines.extend(f"  {r.sae} / {r.eval}: {r.status}: {r.error}" for r in bad.itertuples())
    missing = skipped_metrics(df)
    if not missing.empty:
        lines.append("")
        lines.append("metrics without a value (skipped):")
        for (eval_name, error), grp in missing.groupby(["eval", "error"], sort=True):
            lines.append(f"  {eval_name}: {len(grp)} rows over {grp['sae'].nunique()} SAEs: {error}")
    return "\n".join(lines)


def print_table(run_dir: str | Path) -> str:
    """Print (and return) the trainer x metric table of a run (used by ``fc-sae results``)."""
    text = format_table(load(run_dir))
    print(text)
    return text
