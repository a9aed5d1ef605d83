"""The terminal view of a run: one line per stage with its bar and ETA while a command runs, then
the closing summary. It reads the progress records the stages write (``fc_base.progress``), so it
works from any process, e.g. in the foreground while the stages run in a background Prefect runner.

    python -m pipeline.progress watch RUN_DIR --log FILE [--since EPOCH] -- COMMAND [ARG ...]
    python -m pipeline.progress summary RUN_DIR [--since EPOCH]

``watch`` runs COMMAND with its output appended to FILE, draws the stages of RUN_DIR until COMMAND
exits and exits with its status. On a terminal the running stages are redrawn in place and a stage's
final line stays above them once it ends; elsewhere (a pipe, a log file) a stage's line is printed
when it starts and when it ends. ``summary`` prints the wall time per stage, the headline metrics of
``results.parquet`` and where the report is. ``--since`` leaves out records that earlier runs of the
directory left (stages started before it).
"""
from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, NamedTuple

from fc_base.cli import run_command
from fc_base.progress import DONE, FAILED, ON_DISK, ProgressRecord, read_records

import pipeline  # noqa: F401  (environment first)

POLL_S = 0.5
LABEL_WIDTH = 20
BASELINE = "topk"
"""The trainer listed first (the report's default baseline)."""
STAGE_ORDER = ("harvest", "train", "eval", "report")
_MARK = {DONE: " ✓", FAILED: " ✗ failed"}


# ---- the stage lines ------------------------------------------------------------------------

def _label(rec: ProgressRecord, parents: set[str]) -> str:
    # A step inside a stage that has a line of its own (the absorption probe inside "eval") is indented.
    return ("  " + rec.label) if rec.stage != rec.key and rec.stage in parents else rec.label


_BAR = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
RUNNING_FORMAT = _BAR + "[{elapsed}, ETA {remaining}, {rate_fmt}{postfix}]"
FINISHED_FORMAT = _BAR + "[{elapsed}, {rate_fmt}]"
NO_TOTAL_FORMAT = "{desc}{n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"


def stage_line(rec: ProgressRecord, now: float, width: int = 100, label: str | None = None) -> str:
    """One stage as a line of at most ``width`` characters: label, bar, done/total, elapsed, ETA,
    rate and note (tqdm's meter); a finished stage ends in ✓ (or ✗ failed), a stage that found its
    work on disk says so."""
    from tqdm import tqdm

    label = rec.label if label is None else label
    if rec.status == ON_DISK:
        return f"{label}✓ already on disk"[:width]
    elapsed = max(0.0, (rec.finished_at if rec.finished else now) - rec.started_at)
    mark = _MARK.get(rec.status, "")
    form = NO_TOTAL_FORMAT if not rec.total else FINISHED_FORMAT if rec.finished else RUNNING_FORMAT
    meter = tqdm.format_meter(rec.done, rec.total or None, elapsed, ncols=max(20, width - len(mark)), prefix=label,
                              unit=rec.unit, unit_scale=rec.unit_scale, bar_format=form, initial=rec.initial,
                              postfix=None if rec.finished else rec.note or None)
    return (meter + mark)[:width]


def render(records: list[ProgressRecord], now: float, width: int = 100) -> list[str]:
    """The lines of ``records`` (in their order), labels padded to one column."""
    parents = {r.key for r in records}
    labels = [_label(r, parents) for r in records]
    # A floor on the label column keeps lines printed at different times aligned in the usual case.
    pad = max([LABEL_WIDTH] + [len(s) for s in labels])
    return [stage_line(r, now, width, s.ljust(pad) + " ") for r, s in zip(records, labels)]


class LiveView:
    """Draws the records of a run on ``out``: in place on a terminal, as a plain log elsewhere."""

    def __init__(self, out: IO[str], *, tty: bool | None = None, width: int | None = None,
                 since: float | None = None) -> None:
        self.out = out
        self.since = time.time() if since is None else since
        self.tty = out.isatty() if tty is None else tty
        self.width = width
        self._live = 0  # lines of the block now on screen (the running stages)
        self._started: set[str] = set()
        self._ended: set[str] = set()

    def _width(self) -> int:
        return self.width or (shutil.get_terminal_size((100, 24)).columns - 1 if self.tty else 100)

    def draw(self, records: list[ProgressRecord], now: float | None = None, *, final: bool = False) -> None:
        """Show ``records``; ``final``: the command has exited, every line is printed for good."""
        now = time.time() if now is None else now
        lines = dict(zip((r.key for r in records), render(records, now, self._width())))
        ended = [r for r in records if (r.finished or final) and r.key not in self._ended]
        running = [] if final else [r for r in records if not r.finished]
        self._ended.update(r.key for r in ended)
        if self.tty:  # ended lines stay above; the running ones are redrawn below them
            live = [lines[r.key] for r in running]
            if not records and not final:
                live = [f"waiting for the first stage to start [{fmt_clock(now - self.since)}]"]
            text = f"\x1b[{self._live}F" if self._live else ""
            text += "".join(line + "\x1b[K\n" for line in [lines[r.key] for r in ended] + live) + "\x1b[J"
            self._live = len(live)
        else:  # a line when a stage starts and one when it ends
            started = [r for r in running if r.key not in self._started]
            text = "".join(lines[r.key] + "\n" for r in ended + started)
        self._started.update(r.key for r in running)
        self.out.write(text)
        self.out.flush()


def watch(run_dir: Path, command: list[str], log: Path, since: float | None = None, *,
          out: IO[str] = sys.stdout, poll_s: float = POLL_S) -> int:
    """Run ``command`` (output appended to ``log``) while drawing the stages of ``run_dir``; return
    its exit status."""
    since = time.time() if since is None else since
    log.parent.mkdir(parents=True, exist_ok=True)
    view = LiveView(out, since=since)
    with open(log, "a") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT)
        try:
            while proc.poll() is None:
                view.draw(read_records(run_dir, since))
                time.sleep(poll_s)
        except KeyboardInterrupt:  # the command got the same interrupt; let it finish its way
            proc.wait()
        view.draw(read_records(run_dir, since), final=True)
    return proc.returncode


# ---- the closing summary --------------------------------------------------------------------

class StageTime(NamedTuple):
    stage: str
    wall_s: float
    """From the first of its records' start to the last one's end."""
    items: int
    """Records of the stage (SAEs for train) or, for eval, its tasks."""
    on_disk: bool
    """Every record found its work already complete."""


def stage_times(records: list[ProgressRecord]) -> list[StageTime]:
    """Wall time per stage (harvest, train, eval, report, then any other) of ``records``."""
    stages = sorted(dict.fromkeys(r.stage for r in records),
                    key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else len(STAGE_ORDER))
    out = []
    for stage in stages:
        own = [r for r in records if r.stage == stage]
        top = [r for r in own if r.key == stage]
        start = min(r.started_at for r in own)
        end = max(r.finished_at if r.finished_at is not None else r.updated_at for r in own)
        items = (top[0].total or 0) if top and stage == "eval" else len(own)
        out.append(StageTime(stage, end - start, items, all(r.status == ON_DISK for r in own)))
    return out


def fmt_clock(seconds: float) -> str:
    """Elapsed time as tqdm writes it (mm:ss, h:mm:ss)."""
    from tqdm import tqdm

    return tqdm.format_interval(max(0.0, seconds))


def fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _stage_time_line(t: StageTime) -> str:
    what = {"train": "SAE", "eval": "task"}.get(t.stage)
    count = f"  ({t.items} {what}{'s' if t.items != 1 else ''})" if what else ""
    return f"  {t.stage:<8} {'already on disk' if t.on_disk else fmt_duration(t.wall_s)}{count}"


def _headline_cells(table) -> tuple[list[str], list[str], dict[tuple[str, str], str]]:
    """(column headers, row labels, (row, column) -> cell) of the run's headline metrics."""
    from pipeline.analysis.headline import ARROWS, cell_text, fmt_number, headline_frame, present

    # No baseline: the summary gives levels; the report has the paired differences.
    frame = headline_frame(table, baseline="")
    if frame.empty:
        return [], [], {}
    cols, cells = {}, {}
    groups = frame.groupby(["trainer", "k"], sort=False)
    # At each k the baseline the report compares against comes first, then the others by name.
    for (trainer, k), part in sorted(groups, key=lambda g: (g[0][1], g[0][0] != BASELINE, g[0][0])):
        n = int(part["n"].max())
        cols[(trainer, k)] = f"{trainer}{'' if k < 0 else f' k={k}'}{f' ({n} seeds)' if n > 1 else ''}"
    heads = [h for h in present(table) if h.metric in set(frame["metric"])]
    rows = [f"{h.label} {ARROWS[h.direction]}".strip() for h in heads]
    for _, r in frame.iterrows():
        head = next((h for h in heads if (h.eval, h.metric) == (r["eval"], r["metric"])), None)
        if head is None:
            continue
        first, _ = cell_text(r, baseline="")
        if r["n"] < 2:  # one seed: no spread over seeds to show
            first = first.replace(f" ± {fmt_number(math.nan)}", "", 1)
        cells[(rows[heads.index(head)], cols[(r["trainer"], r["k"])])] = first
    return list(cols.values()), rows, cells


def headline_lines(table, width: int = 100) -> list[str]:
    """The headline metrics as text: a row per metric, a column per trainer (and k), wrapped into
    blocks of columns that fit ``width``."""
    cols, rows, cells = _headline_cells(table)
    if not cols:
        return ["  (no headline metrics in the results table)"]
    label_w = max(len(r) for r in rows)
    col_w = {c: max([len(c)] + [len(cells.get((r, c), "–")) for r in rows]) for c in cols}
    blocks, block, used = [], [], label_w + 2
    for c in cols:
        if block and used + col_w[c] + 3 > width:
            blocks.append(block)
            block, used = [], label_w + 2
        block.append(c)
        used += col_w[c] + 3
    blocks.append(block)
    out = []
    for block in blocks:
        out.append("  " + " " * label_w + "".join("   " + c.ljust(col_w[c]) for c in block).rstrip())
        out += ["  " + r.ljust(label_w) + "".join("   " + cells.get((r, c), "–").ljust(col_w[c]) for c in block).rstrip()
                for r in rows]
    return out


def verdict_lines(results_path: Path, table) -> list[str]:
    """What the differences mean, one plain line per arm (the report's verdict, without markup)."""
    from pipeline.analysis.results_md import run_verdicts

    if not table["trainer"].eq(BASELINE).any():
        return []
    study, sentences = run_verdicts(results_path, table, BASELINE)
    if not sentences:
        return []
    plain = [s.removeprefix("- ").replace("**", "").replace("`", "") for s in sentences]
    return [f"what the differences mean ({study.primary}, each arm against {BASELINE} at the same L0):",
            *(f"  {line}" for line in plain)]


def summary_text(run_dir: Path, since: float | None = None, width: int = 100) -> str:
    """The closing summary of ``run_dir``: wall time per stage, headline metrics, failed tasks, paths."""
    from eval.results import RESULTS_FILE, load, problems

    records = read_records(run_dir, since)
    lines = [f"summary of {run_dir}"]
    if records:
        lines.append("wall time per stage:")
        lines += [_stage_time_line(t) for t in stage_times(records)]
    if (run_dir / RESULTS_FILE).is_file():
        table = load(run_dir)
        lines.append("headline metrics (mean ± std over seeds; eval ± the eval's own noise per SAE; "
                     "↑ higher is better, ↓ lower is better):")
        lines += headline_lines(table, width)
        lines += verdict_lines(run_dir / RESULTS_FILE, table)
        bad = problems(table)
        if len(bad):
            lines.append(f"{len(bad)} eval task{'s' if len(bad) != 1 else ''} failed or were skipped: "
                         f"fc-sae results --run-dir {run_dir} lists them")
        lines.append(f"results table: {run_dir / RESULTS_FILE}   (every metric: fc-sae results --run-dir {run_dir})")
    else:
        lines.append(f"no results table in {run_dir} yet")
    report = run_dir / "report" / "index.html"
    if report.is_file():
        lines.append(f"report:        {report}")
    return "\n".join(lines)


# ---- command line ---------------------------------------------------------------------------

def _run_dir(path: str) -> Path:
    run_dir = Path(path).expanduser().resolve()
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    return run_dir


def cmd_watch(args) -> int:
    command = args.command
    if not command:
        raise ValueError("watch needs the command to run after --")
    run_dir = Path(args.run_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)  # a full run creates it; the records land here
    return watch(run_dir, command, Path(args.log), args.since)


def cmd_summary(args) -> int:
    print(summary_text(_run_dir(args.run_dir), args.since, shutil.get_terminal_size((100, 24)).columns - 1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.progress", description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s watch RUN_DIR --log FILE [--since EPOCH] -- COMMAND [ARG ...]\n"
                                           "       %(prog)s summary RUN_DIR [--since EPOCH]")
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("watch", help="run a command and draw the run's stages until it exits")
    p.add_argument("run_dir")
    p.add_argument("--log", required=True, help="file the command's output is appended to")
    p.add_argument("--since", type=float, help="epoch seconds: show only stages started since")
    p.set_defaults(func=cmd_watch)
    p = sub.add_parser("summary", help="wall time per stage, headline metrics and the report's path")
    p.add_argument("run_dir")
    p.add_argument("--since", type=float, help="epoch seconds: time only stages started since")
    p.set_defaults(func=cmd_summary)
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" is the command to watch, options that look like ours included.
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.command = command
    return run_command("progress", args)


if __name__ == "__main__":
    sys.exit(main())
