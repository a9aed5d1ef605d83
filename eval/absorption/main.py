"""SAE-Bench's first-letter absorption eval, sized for a CPU.

sae-bench's own ``run_eval`` trains the ground-truth probe on the full vocabulary, runs full forwards
and keeps its artifacts inside its package folder.  This adapter calls the same lower-level sae-bench
functions (probe training, k-sparse probing, the absorption calculator, the per-letter aggregation)
with: a seeded word sample, a forward that stops after the SAE's layer, and the probe plus its LLM
activations computed once per (model, hook, word sample) under ``run_dir/eval_artifacts`` and
reused by every SAE of the run.  Metric definitions are sae-bench's.

The ground-truth probe and the prompt activations are read at the SAE's own hook (``hook_name`` of
its folder), so the SAE always encodes the activations it was trained on; sae-bench's calculator
names them ``blocks.{layer}.hook_resid_post`` whatever they are, and is served the SAE's hook.
Letters sae-bench leaves out (a weak probe, or no word scored) get ``skipped`` rows with the reason.
"""
from __future__ import annotations

import json
import math
import random
import statistics
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eval.absorption.metrics import LETTER_METRICS, LETTERS, SUMMARY_METRICS
from eval.results import Skipped
from eval.runtime import file_lock, private_sae_bench_rng, stop_after_layer
from eval.spec import EvalInputs, EvalOptions, EvalOutput, EvalSpec, register
from fc_base.errors import check
from fc_base.progress import stage_progress
from fc_base.io import write_atomic

# sae-bench's VERBOSE_FIRST_LETTER_TEMPLATE (sae-bench itself is imported only when an eval runs: it
# takes seconds, and listing or validating evals must stay fast).
TEMPLATE = "{word} has the first letter:"
SEPARATOR = "\n"
F1_JUMP_THRESHOLD = 0.03  # sae-bench default: a k-sparse F1 gain this large counts as a feature split
L1_DECAY = 0.01  # sae-bench default for the k-sparse probes
MAX_ICL_EXAMPLES = 10  # sae-bench's in-context examples per prompt
RESID_POST = "hook_resid_post"


@dataclass
class AbsorptionOptions(EvalOptions):
    """sae-bench's first-letter absorption eval, sized for a CPU."""

    section = "absorption"
    word_sample: int | None = 8000
    """Words sampled from the vocabulary (None: full vocabulary)."""
    word_sample_seed: int = 0
    """Seed of the word sample, the probe train/test split and the in-context prompts."""
    probe_seeds: int = 3
    """k-sparse-probe seeds per SAE: the metrics are their mean and their spread is written as
    ``<metric>_eval_std`` rows (the eval's own noise, beside the seed spread of the SAEs)."""
    probe_llm_batch_size: int = 64
    """Prompts per LLM forward while building the ground-truth probe (sae-bench's default). It
    changes the probe (batch padding, float sums), so it is part of the probe's artifact key."""
    max_k: int = 10
    """Largest k of sae-bench's k-sparse probes (feature-split detection)."""
    probe_epochs: int = 50
    """Epochs of sae-bench's L1 probe over SAE latents (its k-sparse probing step)."""
    min_probe_f1: float = 0.6
    """A first letter counts as represented when its ground-truth probe F1 exceeds this."""
    min_letters: int = 20
    """Letters that must pass ``min_probe_f1`` for absorption to be evaluated (sae-bench rule)."""

    def __post_init__(self) -> None:
        check(self.word_sample is None or self.word_sample >= 100,
              f"eval.options.absorption.word_sample must be None (full vocabulary) or >= 100, got {self.word_sample}")
        for name in ("max_k", "probe_epochs", "probe_seeds", "probe_llm_batch_size"):
            value = getattr(self, name)
            check(isinstance(value, int) and value > 0,
                  f"eval.options.absorption.{name} must be a positive integer, got {value!r}")
        check(0.0 <= self.min_probe_f1 < 1.0,
              f"eval.options.absorption.min_probe_f1 must be in [0, 1), got {self.min_probe_f1}")
        check(1 <= self.min_letters <= 26, f"eval.options.absorption.min_letters must be in 1..26, got {self.min_letters}")


class AbsorptionNotApplicable(RuntimeError):
    """The model does not represent enough first letters for sae-bench's absorption rule."""


@dataclass(frozen=True)
class ProbeArtifacts:
    """The shared ground truth of one (model, layer, word sample): probe, its data and its quality."""

    root: Path
    probes_dir: Path
    words: list[str]
    probe_f1_by_letter: dict[str, float]
    layer: int
    token_pos: int
    hook: str = ""
    """The TransformerLens hook the probe and the prompt activations read (``blocks.{layer}.<kind>``)."""


class AbsorptionResult(dict):
    """Summary metrics (sae-bench names) plus per-letter metrics ``letter/<x>/<metric>`` (a
    :class:`~eval.results.Skipped` with the reason where sae-bench leaves a letter out); ``prompt_forwards`` counts the prompts this SAE had to run through the model (0 when shared);
    ``main_latents`` and ``absorbing_latents`` are the latents the calculator named (any probe seed),
    ``letter_latents`` the same per first letter (``{letter: {"main": [...], "absorbing": [...]}}``)."""

    prompt_forwards: int = 0
    main_latents: list[int] = []
    absorbing_latents: list[int] = []
    letter_latents: dict[str, dict[str, list[int]]] = {}


def layer_hook(layer: int, hook: str | None = None) -> str:
    """``hook`` (default ``blocks.{layer}.hook_resid_post``), checked to be a hook of decoder block ``layer``."""
    hook = hook or f"blocks.{layer}.{RESID_POST}"
    parts = hook.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or parts[1] != str(layer) or not parts[2].startswith("hook_"):
        raise ValueError(f"absorption reads a hook of decoder block {layer} (blocks.{layer}.hook_...), got {hook!r}")
    return hook


def artifacts_key(model_name: str, layer: int, opts: AbsorptionOptions, llm_dtype: str, hook: str | None = None) -> str:
    """The folder name of the shared probe artifacts; the hook kind is named when it is not resid_post."""
    sample = "all" if opts.word_sample is None else str(opts.word_sample)
    kind = layer_hook(layer, hook).split(".")[2]
    where = f"layer{layer}" + ("" if kind == RESID_POST else f"_{kind}")
    return (f"{model_name.replace('/', '--')}_{where}_words{sample}_seed{opts.word_sample_seed}_{llm_dtype}"
            f"_bs{opts.probe_llm_batch_size}")


def word_token_pos(tokenizer) -> int:
    """Position of the word in "{word} has the first letter:", counted from the end.

    sae-bench hard-codes -6, right for tokenizers that keep " has the first letter:" in 5 tokens
    (Gemma, SmolLM2, Pythia); small tokenizers split it further, so the position is derived."""
    suffix = TEMPLATE.split("{word}")[1]
    return -len(tokenizer(suffix, add_special_tokens=False)["input_ids"]) - 1


def sample_words(tokenizer, n_words: int | None, seed: int) -> list[str]:
    """A seeded sample of alphabetic vocabulary tokens whose prompt piece has the standard length.

    A few tokens split into several tokens inside a prompt, which would break sae-bench's
    equal-length prompts; they are dropped before sampling."""
    from sae_bench.evals.absorption.prompting import first_letter_formatter
    from sae_bench.evals.absorption.vocab import get_alpha_tokens

    vocab = list(dict.fromkeys(get_alpha_tokens(tokenizer)))  # unique, in vocabulary order
    formatter = first_letter_formatter()
    pieces = [SEPARATOR + TEMPLATE.format(word=w) + formatter(w) + SEPARATOR for w in vocab]
    lengths = [len(ids) for ids in tokenizer(pieces, add_special_tokens=False)["input_ids"]]
    standard = Counter(lengths).most_common(1)[0][0]
    usable = sorted(w for w, length in zip(vocab, lengths) if length == standard)
    rng = random.Random(seed)
    if n_words is not None and n_words < len(usable):
        return rng.sample(usable, n_words)
    if n_words is not None:
        print(f"absorption: eval.options.absorption.word_sample={n_words} exceeds the {len(usable)} usable "
              f"vocabulary words; running the full vocabulary", file=sys.stderr)
    return rng.sample(usable, len(usable))


def _probe_f1(model, layer: int, probes_dir: Path) -> dict[str, float]:
    """Per-letter F1 of the ground-truth probe on its test split, as sae-bench computes ``f1_probe``."""
    from sae_bench.evals.absorption.common import load_probe, load_probe_data_split
    from sklearn.metrics import f1_score

    probe = load_probe(model.cfg.model_name, layer, probes_dir, torch.float32, "cpu")
    acts_ND, labelled = load_probe_data_split(model, layer, "test", probes_dir, torch.float32, "cpu")
    with torch.no_grad():
        scores_NL = probe(acts_ND).float().numpy()
    answers_N = np.array([label for _, label in labelled])
    return {letter: float(f1_score(answers_N == i, scores_NL[:, i] > 0.0, zero_division=0.0))
            for i, letter in enumerate(LETTERS)}


def ensure_probe(model, layer: int, artifacts_dir: Path, opts: AbsorptionOptions, common,
                 hook: str | None = None) -> ProbeArtifacts:
    """Train (once per run) sae-bench's 26-way first-letter probe on a word sample at ``hook``
    (default ``blocks.{layer}.hook_resid_post``)."""
    from sae_bench.evals.absorption.common import create_and_train_probe
    from sae_bench.evals.absorption.prompting import first_letter_formatter

    hook = layer_hook(layer, hook)
    root = Path(artifacts_dir) / "absorption" / artifacts_key(model.cfg.model_name, layer, opts, common.llm_dtype, hook)
    probes_dir = root / "probes"
    probe_file = probes_dir / model.cfg.model_name / f"layer_{layer}" / "probe.pth"
    token_pos = word_token_pos(model.tokenizer)
    words_file = root / "words.json"
    f1_file = root / "probe_f1.json"
    with file_lock(root / ".lock"):
        if not (probe_file.is_file() and words_file.is_file() and f1_file.is_file()):
            words = sample_words(model.tokenizer, opts.word_sample, opts.word_sample_seed)
            # The probe's prompts (one per word) are most of the run's one-time cost: minutes on a CPU.
            with stage_progress("eval.absorption-probe", total=len(words), unit="prompt",
                                label="absorption probe", unit_scale=True) as progress:
                with private_sae_bench_rng(opts.word_sample_seed), stop_after_layer(
                        model, layer, read_pos=token_pos, on_forward=progress.update):
                    create_and_train_probe(
                        model=model, formatter=first_letter_formatter(), hook_point=hook,
                        probes_dir=probes_dir, vocab=words, batch_size=opts.probe_llm_batch_size, num_epochs=50,
                        lr=1e-2, device=torch.device("cpu"), base_template=TEMPLATE, pos_idx=token_pos)
                progress.note("probe F1")
                f1_by_letter = _probe_f1(model, layer, probes_dir)
            words_file.write_text(json.dumps(words))
            f1_file.write_text(json.dumps(f1_by_letter, indent=1))
        words = json.loads(words_file.read_text())
        f1_by_letter = json.loads(f1_file.read_text())
    return ProbeArtifacts(root=root, probes_dir=probes_dir, words=words, probe_f1_by_letter=f1_by_letter,
                          layer=layer, token_pos=token_pos, hook=hook)


def check_letters(probe: ProbeArtifacts, opts: AbsorptionOptions, model_name: str) -> list[str]:
    """The letters whose probe passes; raises when fewer than sae-bench's minimum pass."""
    passing = [l for l, f1 in probe.probe_f1_by_letter.items() if f1 > opts.min_probe_f1]
    if len(passing) < opts.min_letters:
        weak = ", ".join(f"{l}={f1:.2f}" for l, f1 in sorted(probe.probe_f1_by_letter.items(), key=lambda t: t[1])[:6])
        raise AbsorptionNotApplicable(
            f"only {len(passing)} of 26 letters have first-letter probe F1 > {opts.min_probe_f1} "
            f"at layer {probe.layer} of {model_name} with {len(probe.words)} words (sae-bench needs "
            f">= {opts.min_letters}; weakest: {weak}); try a larger eval.options.absorption.word_sample "
            f"or another layer")
    return passing


class SharedPromptActivations:
    """Activations at ``hook`` (the SAE's; default ``blocks.{layer}.hook_resid_post``) at the word
    position of absorption prompts, computed once per run.

    The absorption calculator builds the same prompts for every SAE (same words, seeded in-context
    examples), so the model forward is shared: missing prompts are run (stopping after ``layer``),
    known ones are served from ``path``.  Fresh prompts, as in sae-bench: reusing the probe's own
    test activations would bias the counts, since those are the activations the probe fired on.
    Served batches have shape (B, -token_pos, d) holding each prompt's activation at ``token_pos``,
    the only position the calculator reads, under the name it asks for: sae-bench's calculator asks
    for ``blocks.{layer}.hook_resid_post`` whatever hook the SAE reads, and gets the SAE's hook."""

    def __init__(self, model, layer: int, token_pos: int, path: Path, hook: str | None = None):
        self.model, self.layer, self.token_pos, self.path = model, layer, token_pos, path
        self.hook = layer_hook(layer, hook)
        self.acts: dict[str, torch.Tensor] = torch.load(path) if path.is_file() else {}
        self.added = 0

    def run_with_cache(self, prompts: list[str], names_filter=None):
        requested = [names_filter] if isinstance(names_filter, str) else list(names_filter or [self.hook])
        if any(name.split(".")[:2] != ["blocks", str(self.layer)] for name in requested):
            raise ValueError(f"prompt activations of decoder block {self.layer} asked for {requested}")
        missing = [p for p in dict.fromkeys(prompts) if p not in self.acts]
        if missing:
            with stop_after_layer(self.model, self.layer, read_pos=self.token_pos):
                _, cache = self.model.run_with_cache(missing, names_filter=[self.hook])
            acts_BD = cache[self.hook][:, self.token_pos, :].cpu().clone()  # not a view of (B, T, d)
            self.acts.update(zip(missing, acts_BD))
            self.added += len(missing)
        acts_BD = torch.stack([self.acts[p] for p in prompts])
        out_BPD = acts_BD.new_zeros(len(prompts), -self.token_pos, acts_BD.shape[-1])
        out_BPD[:, self.token_pos] = acts_BD
        return None, dict.fromkeys(requested, out_BPD)

    def to_tokens(self, *args, **kwargs):
        return self.model.to_tokens(*args, **kwargs)

    def __getattr__(self, name):  # tokenizer, cfg, ...: the real model's
        return getattr(self.model, name)

    def save(self) -> None:
        if self.added:
            write_atomic(self.path, lambda tmp: torch.save(self.acts, tmp))


def run_absorption(model, sae, sae_name: str, probe: ProbeArtifacts, opts: AbsorptionOptions,
                   llm_batch_size: int, probe_seeds: list[int] | None = None) -> tuple[AbsorptionResult, list[dict]]:
    """sae-bench absorption metrics for one SAE against the shared probe artifacts, averaged over
    ``opts.probe_seeds`` k-sparse-probe seeds 0..n-1, or the given ``probe_seeds`` (same prompts for
    every seed and every SAE).

    Returns the metrics (with ``<metric>_eval_std`` across probe seeds) and the per-letter table
    (one dict per letter, values averaged over probe seeds). A letter sae-bench leaves out has
    :class:`~eval.results.Skipped` metrics naming why (and ``skip_reason`` in its table row)."""
    passing = set(check_letters(probe, opts, model.cfg.model_name))
    seeds = list(probe_seeds if probe_seeds is not None else range(opts.probe_seeds))
    per_seed = [_absorption_one_probe_seed(model, sae, sae_name, probe, opts, llm_batch_size, seed)
                for seed in seeds]
    letters = []
    for i, letter in enumerate(LETTERS):
        rows = [letters_s[i] for letters_s, _, _ in per_seed]
        included = all(r["included"] for r in rows)
        merged = {"letter": letter, "probe_f1": rows[0]["probe_f1"], "included": included,
                  "skip_reason": "" if included else _letter_skip_reason(letter, rows, seeds, opts)}
        for key in LETTER_METRICS + ("num_probe_true_positives",):
            merged[key] = float(np.mean([r[key] for r in rows])) if included else float("nan")
        letters.append(merged)
    used = [r for r in letters if r["included"]]
    if len(used) < 2:
        raise RuntimeError(f"only {len(used)} letters produced absorption results (passing probes: {sorted(passing)})")
    summaries = [_summary([r for r in letters_s if r["included"]]) for letters_s, _, _ in per_seed]
    result = AbsorptionResult()
    for name in SUMMARY_METRICS:
        values = [s[name] for s in summaries]
        result[name] = float(np.mean(values))
        result[f"{name}_eval_std"] = (float(np.std(values, ddof=1)) if len(values) > 1 else
                                      Skipped("one k-sparse-probe seed: the eval's own spread needs two "
                                              "(eval.options.absorption.probe_seeds)"))
    for name, key in zip(("std_dev_absorption_fraction_score", "std_dev_full_absorption_score",
                          "std_dev_num_split_features"), LETTER_METRICS):
        result[name] = statistics.stdev([r[key] for r in used])  # spread over letters, as sae-bench
    result["n_letters_evaluated"] = len(used)
    result["n_words"] = len(probe.words)
    result["n_probe_seeds"] = len(per_seed)
    for r in letters:
        for key in LETTER_METRICS:
            result[f"letter/{r['letter']}/{key}"] = r[key] if r["included"] else Skipped(r["skip_reason"])
        result[f"letter/{r['letter']}/probe_f1"] = r["probe_f1"]
    result.prompt_forwards = sum(forwards for _, forwards, _ in per_seed)
    result.letter_latents = {}
    for letter in LETTERS:  # the union over probe seeds; a main latent of the letter is never also its absorber
        named = [by_letter[letter] for _, _, by_letter in per_seed if letter in by_letter]
        if named:
            main = set().union(*(n["main"] for n in named))
            result.letter_latents[letter] = {"main": sorted(main),
                                             "absorbing": sorted(set().union(*(n["absorbing"] for n in named)) - main)}
    # Run level: every letter's main latents, and the absorbers that are no letter's main latent.
    main_all = set().union(*(set(r["main"]) for r in result.letter_latents.values()))
    result.main_latents = sorted(main_all)
    result.absorbing_latents = sorted(set().union(*(set(r["absorbing"]) for r in result.letter_latents.values()))
                                      - main_all)
    return result, letters


def _letter_skip_reason(letter: str, rows: list[dict], seeds: list[int], opts: AbsorptionOptions) -> str:
    """Why sae-bench leaves ``letter`` out of this SAE's absorption means."""
    f1 = rows[0]["probe_f1"]
    if not f1 > opts.min_probe_f1:
        return (f"first letter {letter!r}: ground-truth probe F1 {f1:.3f} is not above "
                f"eval.options.absorption.min_probe_f1={opts.min_probe_f1}; sae-bench leaves the letter out")
    missing = [str(seed) for seed, r in zip(seeds, rows) if not r["included"]]
    return (f"first letter {letter!r}: sae-bench's absorption calculator scored no test word of this letter "
            f"(k-sparse-probe seed {', '.join(missing)}); sae-bench leaves the letter out")


def _summary(used: list[dict]) -> dict[str, float]:
    """sae-bench's summary metrics: the mean over the letters used of each per-letter metric."""
    return {name: statistics.mean(r[key] for r in used) for name, key in zip(SUMMARY_METRICS, LETTER_METRICS)}


def absorption_calculator(prompt_model, probe: ProbeArtifacts, llm_batch_size: int):
    """sae-bench's absorption calculator with its default thresholds, prompting from the word sample
    through ``prompt_model`` (a :class:`SharedPromptActivations`)."""
    from sae_bench.evals.absorption import feature_absorption as fa
    from sae_bench.evals.absorption.feature_absorption_calculator import FeatureAbsorptionCalculator
    from sae_bench.evals.absorption.prompting import first_letter_formatter

    return FeatureAbsorptionCalculator(
        model=prompt_model, icl_word_list=probe.words, max_icl_examples=MAX_ICL_EXAMPLES, base_template=TEMPLATE,
        answer_formatter=first_letter_formatter(), word_token_pos=probe.token_pos,
        full_absorption_probe_cos_sim_threshold=fa.FULL_ABSORPTION_PROBE_COS_THRESHOLD,
        absorption_fraction_probe_cos_sim_threshold=fa.ABSORPTION_FRACTION_PROBE_COS_THRESHOLD,
        probe_projection_proportion_threshold=fa.ABSORPTION_PROBE_PROJECTION_PROPORTION_THRESHOLD,
        absorption_fraction_max_absorbing_latents=fa.ABSORPTION_FRACTION_MAX_ABSORBING_LATENTS,
        batch_size=llm_batch_size)


def _absorption_one_probe_seed(model, sae, sae_name: str, probe: ProbeArtifacts, opts: AbsorptionOptions,
                               llm_batch_size: int, probe_seed: int
                               ) -> tuple[list[dict], int, dict[str, dict[str, list[int]]]]:
    """sae-bench's k-sparse probing (seeded by ``probe_seed``) and absorption calculator for one SAE.

    The k-sparse probes are trained by sae-bench; their scoring and F1 go through ``eval.absorption.k_sparse``,
    which gives sae-bench's numbers without its per-word loops and intermediate files."""
    from sae_bench.evals.absorption import feature_absorption as fa
    from sae_bench.evals.absorption.common import load_probe, load_probe_data_split_or_train, load_or_train_probe
    from sae_bench.evals.absorption.k_sparse_probing import train_k_sparse_probes
    from sae_bench.evals.absorption.main import _aggregate_results_df

    from eval.absorption import k_sparse

    layer = probe.layer
    n_train = int(len(probe.words) * 0.8)
    precalc = n_train * sae.cfg.d_sae * 4 < 2 * 1024**3  # SAE codes of the train words fit in memory
    split_args = dict(base_template=TEMPLATE, pos_idx=probe.token_pos, probes_dir=probe.probes_dir, layer=layer,
                      device="cpu")
    with private_sae_bench_rng(1000 + probe_seed), stop_after_layer(model, layer, read_pos=probe.token_pos):
        gt_probe = load_or_train_probe(model=model, layer=layer, probes_dir=probe.probes_dir, base_template=TEMPLATE,
                                       pos_idx=probe.token_pos, device=str(sae.device))
        train_acts, train_labels = load_probe_data_split_or_train(model, split="train", **split_args)
        k_probes = train_k_sparse_probes(sae, train_labels, train_acts, ks=list(range(1, opts.max_k + 1)),
                                         l1_decay=L1_DECAY, num_epochs=opts.probe_epochs, precalc_sae_acts=precalc)
        test_acts, test_labels = load_probe_data_split_or_train(model, split="test", **split_args)
        scores_df = k_sparse.raw_scores(sae, gt_probe, k_probes, test_labels, test_acts)
    metrics_df = k_sparse.metrics_frame(scores_df, k_probes, opts.max_k, F1_JUMP_THRESHOLD)
    # In-context examples come from the word sample (sae-bench would use the whole vocabulary, whose
    # odd tokens break its equal-length prompts); seeded so every SAE and probe seed sees the same
    # prompts and the prompt activations are shared.
    with private_sae_bench_rng(opts.word_sample_seed + 1), file_lock(probe.root / ".prompts.lock"):
        prompt_model = SharedPromptActivations(model, layer, probe.token_pos, probe.root / "prompt_acts.pt",
                                               hook=probe.hook or None)
        calculator = absorption_calculator(prompt_model, probe, llm_batch_size)
        raw_df = fa.calculate_projection_and_cos_sims(
            calculator, sae, load_probe(model_name=model.cfg.model_name, layer=layer, probes_dir=probe.probes_dir,
                                        device=str(sae.device)),
            likely_negs=k_sparse.likely_false_negatives(metrics_df, scores_df), layer=layer)
        prompt_model.save()
    if raw_df.empty:
        raise RuntimeError("the ground-truth probe fired on no test word: nothing to measure absorption on")
    agg_df = _aggregate_results_df(raw_df).set_index("letter")
    f1_probe = metrics_df.set_index("letter")["f1_probe"]
    letters: list[dict] = []
    for letter in LETTERS:
        row = agg_df.loc[letter] if letter in agg_df.index else None
        letters.append({
            "letter": letter,
            "probe_f1": float(f1_probe[letter]),
            "included": bool(f1_probe[letter] > opts.min_probe_f1 and row is not None),
            "absorption_fraction": float(row["mean_absorption_fraction"]) if row is not None else float("nan"),
            "full_absorption_rate": float(row["full_absorption_rate"]) if row is not None else float("nan"),
            "num_split_features": int(row["num_split_feats"]) if row is not None else 0,
            "num_probe_true_positives": float(row["num_probe_true_positives"]) if row is not None else 0.0,
        })
    return letters, prompt_model.added, latents_by_letter(raw_df)


def latents_by_letter(raw_df) -> dict[str, dict[str, list[int]]]:
    """The latents sae-bench's calculator named, per first letter: the main latents (its k-sparse
    probe's features) and the absorbing latents (the top probe-projection latent of a word with
    absorption, main latents of the letter left out)."""
    out: dict[str, dict[str, list[int]]] = {}
    for letter, rows in raw_df.groupby("letter"):
        main = {int(f) for feats in rows["split_feats"] for f in feats}
        absorbed = rows[(rows["absorption_fraction"] > 0) | rows["is_full_absorption"].astype(bool)]
        out[str(letter)] = {"main": sorted(main),
                            "absorbing": sorted({int(f) for f in absorbed["top_projection_feat"]} - main)}
    return out


def run(inputs: EvalInputs, opts: AbsorptionOptions) -> EvalOutput:
    probe = ensure_probe(inputs.model, inputs.meta.layer, inputs.artifacts_dir, opts, inputs.common,
                         hook=inputs.meta.hook_name or None)
    metrics, letters = run_absorption(inputs.model, inputs.sae, inputs.meta.name, probe, opts,
                                      inputs.common.llm_batch_size)
    out = dict(metrics)
    out.update(tracker_detection(inputs.sae_folder, inputs.meta.d_sae, metrics.main_latents, metrics.absorbing_latents))
    return EvalOutput(out, {"letters": letters, "token_pos": probe.token_pos, "n_words": len(probe.words),
                            "prompt_forwards": metrics.prompt_forwards, "main_latents": metrics.main_latents,
                            "absorbing_latents": metrics.absorbing_latents,
                            "letter_latents": metrics.letter_latents})


def tracker_detection(sae_folder: Path | None, d_sae: int, main: list[int], absorbing: list[int]) -> dict[str, float]:
    """The frequency/consistency analysis on real data: how well each statistic the tracker recorded
    during training picks out the absorbing latents (``detect_auc_absorbing_<stat>``) and the main
    first-letter latents (``detect_auc_main_<stat>``)."""
    import pandas as pd

    from eval.detection import detection_aucs
    from fc_base.sae_folder import HISTORY_FILE

    out = {"n_main_latents": float(len(main)), "n_absorbing_latents": float(len(absorbing))}
    path = None if sae_folder is None else Path(sae_folder) / HISTORY_FILE
    if path is None or not path.is_file():
        return out
    history = pd.read_parquet(path)
    for name, ids in (("absorbing", absorbing), ("main", main)):
        mask_M = np.zeros(d_sae, dtype=bool)
        mask_M[list(ids)] = True
        aucs = detection_aucs(history, mask_M, prefix=f"detect_auc_{name}_")
        if not mask_M.any() or mask_M.all():
            why = Skipped(f"sae-bench's absorption calculator named {'no' if not mask_M.any() else 'every'} "
                          f"{name} latent: a detection AUC needs latents on both sides")
            aucs = {metric: why if math.isnan(value) else value for metric, value in aucs.items()}
        out.update(aucs)
    return out


ABSORPTION = register(EvalSpec("absorption", "sae-bench first-letter feature absorption (probe shared per run)",
                               run, options=AbsorptionOptions))
