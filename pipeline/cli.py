"""The ``fc-sae`` command line: one subcommand per stage, plus config and model helpers.

Every error ends as one line on stderr and exit status 1 (``FC_SAE_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from fc_base.cli import run_command

import pipeline  # noqa: F401  (environment first)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose registry listings are made only when its help is shown: listing the
    trainer recipes or the evals imports every plug-in module (torch, pandas), which a command that
    only runs should not pay for while its arguments are parsed."""

    def __init__(self, *args, epilog_from: Callable[[], str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._epilog_from = epilog_from
        self._help_from: dict[argparse.Action, Callable[[], str]] = {}

    def add_listing_argument(self, *names: str, help_from: Callable[[], str], **kwargs) -> argparse.Action:
        """An argument whose help text is ``help_from()``, made when help is shown."""
        action = self.add_argument(*names, **kwargs)
        self._help_from[action] = help_from
        return action

    def format_help(self) -> str:
        for action, make in self._help_from.items():
            action.help = make()
        if self._epilog_from is not None:
            self.epilog = self._epilog_from()
        return super().format_help()


def _names(names) -> str:
    """Names for a help text (which argparse %-formats)."""
    return ", ".join(names).replace("%", "%%")


def _preset_names() -> str:
    from pipeline.config import PRESETS

    return _names(PRESETS)


def _trainer_names() -> str:
    from trainers.training.recipe import recipe_names

    return _names(recipe_names())


def _eval_names() -> str:
    from eval.spec import eval_names

    return _names(eval_names())


def _default_calibration_rows() -> int:
    from trainers.training.recipe import option_sections

    return option_sections()["batchtopk"]().calibration_rows


def _sae_help(what: str) -> str:
    from fc_base.sae_folder import SAES_DIR, sae_name

    return (f"{what}: a folder name under RUN_DIR/{SAES_DIR}, {sae_name('<trainer>', '<seed>')} or "
            f"{sae_name('<trainer>', '<seed>', '<point>')}")


def _add_config_args(p: argparse.ArgumentParser, run_dir: bool = True) -> None:
    p.add_argument("--preset", help=f"preset name: {_preset_names()}")
    p.add_argument("--config", help="JSON or YAML config file (may name a preset and override fields)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, read as its type: --set train.k=64, --set train.seeds=0,1 "
                   "(repeatable)")
    if run_dir:
        p.add_argument("--run-dir", required=True, type=Path, help="run directory (created if needed)")


def _cfg(args, check=None):
    from pipeline.rundir import config_for

    return config_for(args.run_dir, args.preset, args.config, args.overrides, check)


def cmd_config_show(args) -> int:
    from pipeline.config import resolve_config

    print(resolve_config(args.preset or "demo", args.config, args.overrides).to_json())
    return 0


def cmd_model(args) -> int:
    from pipeline import models
    from pipeline.config import ModelConfig, RunConfig
    from pipeline.model_source import model_source

    source = model_source(RunConfig(model=ModelConfig(name=args.name, source=args.source, layer=0,
                                                      synthetic_config=args.synthetic_config or "")))
    print(json.dumps(source.ensure(), indent=2))
    if source.kind != "language":
        return 0
    if args.prompt:
        import torch

        tok = models.load_tokenizer(args.name, source=args.source)
        model = models.load_model(args.name, source=args.source)
        ids = tok(args.prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False)
        print(tok.decode(out[0], skip_special_tokens=True))
    return 0


def cmd_harvest(args) -> int:
    from pipeline.harvest import check_hook, harvest

    path = harvest(_cfg(args, check_hook), args.run_dir)
    print(f"activation cache: {path}")
    return 0


def cmd_train(args) -> int:
    from pipeline.train import train

    for path in train(_cfg(args), args.run_dir, trainer=args.trainer, seed=args.seed, point=args.point):
        print(f"SAE: {path}")
    return 0


def cmd_eval(args) -> int:
    from pipeline.evaluate import evaluate

    cfg = _cfg(args)
    saes = list(args.sae)
    if args.sae_path:
        from pipeline.external_sae import import_external_sae

        name = import_external_sae(args.run_dir, args.sae_path, cfg, args.sae_name)
        print(f"external SAE: {args.run_dir / 'saes' / name}")
        saes.append(name)
    elif args.sae_name:
        raise SystemExit("fc-sae eval: --sae-name names an SAE given with --sae-path")
    path = evaluate(cfg, args.run_dir, evals=args.eval or None, saes=saes or None)
    print(f"results: {path}")
    return 0


def cmd_calibrate(args) -> int:
    from pipeline.calibrate import calibrate

    records = calibrate(args.run_dir, args.sae or None, rows=args.rows)
    if not records:
        print(f"no BatchTopK-family SAE in {args.run_dir}")
    for name, r in records.items():
        print(f"{name}: threshold {r.old_threshold:.4g} -> {r.threshold:.4g}; mean L0 on {r.check_rows} check rows "
              f"{r.l0_check_old:.2f} -> {r.l0_check:.2f} (target {r.target_l0:g})")
    if records:
        print("evaluation rows of these SAEs describe the old threshold: re-run fc-sae eval --sae NAME")
    return 0


def cmd_dashboard(args) -> int:
    from pipeline.dashboard.build import build_dashboard
    from pipeline.dashboard.options import DashboardOptions
    from pipeline.dashboard.inputs import parse_latents

    opts = DashboardOptions(sae=args.sae, latents=parse_latents(args.latents) if args.latents else (),
                            absorbing=args.absorbing, top=args.top, out=args.out, n_contexts=args.contexts)
    print(f"dashboard: {build_dashboard(args.run_dir, opts)}")
    return 0


def cmd_results(args) -> int:
    from eval.results import print_table

    print_table(args.run_dir)
    return 0


def cmd_compare(args) -> int:
    from pipeline.analysis.compare import default_metrics, write_comparison
    from eval.results import load

    table = load(args.run_dir)
    if args.eval:
        table = table[table["eval"] == args.eval]
    metrics = args.metric or default_metrics(table)
    print(write_comparison(args.run_dir, table, metrics, args.baseline, args.eval or None,
                           args.trainer or None))
    return 0


def cmd_results_md(args) -> int:
    from pipeline.analysis.results_md import load_study, render

    studies = [load_study("synthetic", p) for p in args.synthetic] + [load_study("language", p) for p in args.language]
    if not studies:
        raise SystemExit("fc-sae results-md: give at least one --synthetic or --language results table")
    for s in studies:
        if not Path(s.source).is_file():
            raise SystemExit(f"fc-sae results-md: no results table at {s.source}")
    command = "fc-sae results-md " + " ".join([f"--synthetic {p}" for p in args.synthetic] +
                                                [f"--language {p}" for p in args.language] + [f"--out {args.out}"])
    render(studies, Path(args.out), command)
    print(f"wrote {args.out}")
    return 0


def cmd_report(args) -> int:
    from pipeline.analysis.report import report

    print(f"report: {report(_cfg(args), args.run_dir)}")
    return 0


def cmd_run(args) -> int:
    """All stages in-process, without Prefect (the flow does the same with orchestration)."""
    from pipeline.harvest import check_hook
    from pipeline.stages import run_all

    run_all(_cfg(args, check_hook), args.run_dir)
    return 0


def _listing(pairs: list[tuple[str, str]]) -> str:
    """``  name  description`` lines, the descriptions in one column."""
    width = max(len(name) for name, _ in pairs)
    return "\n".join(f"  {name:{width}s}  {description}" for name, description in pairs)


def _recipes_epilog() -> str:
    from trainers.training.recipe import recipes

    return ("trainer recipes (train.trainers; knobs under train.options.<section>):\n"
            + _listing([(r.name, r.description) for r in recipes()])
            + "\nFC guidance composes with every architecture: fc_<recipe> splits high absorption-score latents.")


def _evals_epilog() -> str:
    from eval.spec import eval_specs

    return ("evals (eval.evals; knobs under eval.options.<section>):\n"
            + _listing([(e.name, e.description) for e in eval_specs()]))


def build_parser() -> argparse.ArgumentParser:
    from pipeline.dashboard.options import DEFAULT_TOP
    from pipeline.models import EMBEDDED_GEMMA, SOURCES

    parser = _Parser(prog="fc-sae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser("config", help="show the resolved config")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    show = cfg_sub.add_parser("show", help="print the resolved config as JSON")
    _add_config_args(show, run_dir=False)
    show.set_defaults(func=cmd_config_show)

    model = sub.add_parser("model", help="provision a model by name (or build a synth/* model) and print its provenance")
    model.add_argument("name", nargs="?", default=EMBEDDED_GEMMA,
                       help="model name (default: %(default)s); synth/<name> builds a synthetic model")
    model.add_argument("--source", default=SOURCES[0], choices=SOURCES, help="where the weights come from "
                       "(model.source; default: %(default)s)")
    model.add_argument("--synthetic-config", help="JSON/YAML SyntheticModelConfig file for a custom synth/<name>")
    model.add_argument("--prompt", help="also greedily continue this text")
    model.add_argument("--max-new-tokens", type=int, default=20)
    model.set_defaults(func=cmd_model)

    for name, func, helptext in [("harvest", cmd_harvest, "harvest activations into the Zarr cache"),
                                 ("train", cmd_train, "train the SAEs listed in the config"),
                                 ("eval", cmd_eval, "run SAE-Bench evals and write results.parquet"),
                                 ("report", cmd_report, "write plots and report/index.html"),
                                 ("run", cmd_run, "run every stage in-process (no Prefect)")]:
        p = sub.add_parser(name, help=helptext, description=helptext,
                           epilog_from={"train": _recipes_epilog, "eval": _evals_epilog}.get(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_config_args(p)
        p.set_defaults(func=func)
        if name == "train":
            p.add_argument("--trainer", help="only this trainer recipe (one of those listed below)")
            p.add_argument("--seed", type=int, help="only this seed")
            p.add_argument("--point", help="only this L0-sweep point (train.sweep label)")
        if name == "eval":
            p.add_argument("--eval", action="append", default=[],
                           help="only this eval (repeatable; one of those listed below)")
            p.add_argument("--sae", action="append", default=[], help=_sae_help("only this SAE (repeatable)"))
            p.add_argument("--sae-path", type=Path, help="also score an SAE saved in SAELens's format (a folder "
                           "with cfg.json and sae_weights.safetensors: standard, topk or jumprelu), imported as "
                           "RUN_DIR/saes/<name> with trainer 'external'; only it is scored unless --sae adds others")
            p.add_argument("--sae-name", help="the imported SAE's folder name (default: external_<folder name>)")

    cal = sub.add_parser("calibrate", help="set BatchTopK-family thresholds of finished SAEs so mean L0 = k on the cache",
                         description="Re-calibrate the inference threshold of finished BatchTopK, Matryoshka (and "
                         "FC variant) SAE folders in place from the run's activation cache, without retraining: "
                         "the threshold that keeps the k x N largest pre-activations of N cache rows, checked "
                         "on N disjoint rows. Atomic and idempotent; the record goes into sae_meta.json.")
    cal.add_argument("--run-dir", required=True, type=Path)
    cal.add_argument("--sae", action="append", default=[], help=_sae_help(
        "only this SAE (repeatable; default: every BatchTopK-family SAE of the run)"))
    cal.add_listing_argument("--rows", type=int, help_from=lambda: (
        f"calibration rows (default: the SAE's train.options.batchtopk.calibration_rows, {_default_calibration_rows()})"))
    cal.set_defaults(func=cmd_calibrate)

    cmp = sub.add_parser("compare", help="mean ± std per trainer and seed-paired differences to a baseline")
    cmp.add_argument("--run-dir", required=True, type=Path)
    cmp.add_listing_argument("--baseline", default="topk", help_from=lambda: (
        f"trainer the others are compared with (default: %(default)s); trainer recipes: {_trainer_names()}"))
    cmp.add_listing_argument("--eval", help_from=lambda: f"only this eval's metrics; evals: {_eval_names()}")
    cmp.add_argument("--metric", action="append", default=[], help="only this metric (repeatable)")
    cmp.add_listing_argument("--trainer", action="append", default=[], help_from=lambda: (
        f"only these trainers, in this order (repeatable); trainer recipes: {_trainer_names()}"))
    cmp.set_defaults(func=cmd_compare)

    md = sub.add_parser("results-md", help="write RESULTS.md from results tables (no hand-typed numbers)")
    md.add_argument("--synthetic", action="append", default=[], help="results.parquet of a synthetic (ground truth) run")
    md.add_argument("--language", action="append", default=[], help="results.parquet of a language-model run")
    md.add_argument("--out", default="RESULTS.md", help="output file (plots go beside it under docs/results/)")
    md.set_defaults(func=cmd_results_md)

    dash = sub.add_parser("dashboard", help="static HTML page of chosen latents, from the cache (no model forward)",
                          description="Write RUN_DIR/dashboards/<sae>/index.html: per latent its top-activating "
                          "contexts decoded from the cache, activation histogram, tracker history, splits and "
                          "repairs, nearest decoder rows and the first letters the absorption eval ties it to. "
                          "One pass over the cache; nothing is written on bad input.")
    dash.add_argument("--run-dir", required=True, type=Path)
    dash.add_argument("--sae", required=True, help=_sae_help("the SAE"))
    pick = dash.add_mutually_exclusive_group()
    pick.add_argument("--latents", help="comma-separated latent indices, e.g. 12,407")
    pick.add_argument("--absorbing", metavar="LETTER", help="the latents the absorption eval named for this first letter")
    pick.add_argument("--top", type=int, default=DEFAULT_TOP, help="the N latents of highest absorption score "
                      "s = f(1-c) in the tracker's last snapshot (most frequent without history; default: %(default)s)")
    dash.add_argument("--contexts", type=int, default=20, help="top contexts per latent (default: %(default)s)")
    dash.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/dashboards/<sae>)")
    dash.set_defaults(func=cmd_dashboard)

    res = sub.add_parser("results", help="print the trainer x metric table")
    res.add_argument("--run-dir", required=True, type=Path)
    res.set_defaults(func=cmd_results)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("fc-sae", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
