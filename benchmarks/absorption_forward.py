"""The absorption eval's once-per-run cost, the language-model forwards of its prompts: sae-bench's
full-prompt forward against the project's forward that stops at the word, side by side on the same
batches of real probe prompts, with a check that the activations read are bit-identical, and the
cost of the whole vocabulary extrapolated from the measured rate.

    .venv/bin/python benchmarks/absorption_forward.py --preset experiment --set model.dtype=float32 --prompts 1024

The prompts are the ones sae-bench's probe build makes (``create_dataset_probe_training``: one prompt
per word, 10 in-context examples), for words of the usable vocabulary (``eval.absorption.main.sample_words``),
run through the eval's TransformerLens model in batches of ``probe_llm_batch_size``. The two passes
alternate batch by batch, so a shared machine slows both alike. The forward is linear in the number
of prompts (every batch has the same shape), so the full-vocabulary figure is the measured seconds
per prompt times the prompts the eval runs once per run: one per word for the probe and, for the
calculator's fresh prompts, at most one per test word (a fifth of the words).
"""
from __future__ import annotations

import argparse
import time

import torch

import pipeline  # noqa: F401  (offline environment first)


def probe_prompts(tokenizer, n_prompts: int, seed: int) -> tuple[list[str], int]:
    """The first ``n_prompts`` probe prompts sae-bench's probe build would run for the full vocabulary
    (their in-context examples drawn from a generator seeded by ``seed`` alone), and the number of
    usable words."""
    from sae_bench.evals.absorption.prompting import create_icl_prompt, first_letter_formatter

    from eval.absorption.main import TEMPLATE, sample_words
    from eval.runtime import private_sae_bench_rng

    words = sample_words(tokenizer, None, seed)
    formatter = first_letter_formatter()
    examples = words[: int(len(words) * 0.8)]  # sae-bench draws a train prompt's examples from the train words
    with private_sae_bench_rng(seed):
        prompts = [create_icl_prompt(word=word, examples=examples, answer_formatter=formatter, base_template=TEMPLATE,
                                     max_icl_examples=10, prepend_separator_to_first_example=True).base
                   for word in words[:n_prompts]]
    return prompts, len(words)


def main() -> None:
    from eval.absorption.main import AbsorptionOptions, layer_hook, word_token_pos
    from eval.runtime import stop_after_layer
    from pipeline.config import apply_overrides, get_preset
    from pipeline.models import load_hooked_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="experiment")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--prompts", type=int, default=1024, help="probe prompts timed (in batches of the probe's batch size)")
    args = ap.parse_args()

    cfg = apply_overrides(get_preset(args.preset), args.set)
    opts = cfg.eval.option(AbsorptionOptions)
    model = load_hooked_model(cfg.model.name, source=cfg.model.source, dtype=cfg.eval.llm_dtype)
    layer, hook = cfg.model.layer, layer_hook(cfg.model.layer, cfg.model.hook)
    pos = word_token_pos(model.tokenizer)
    prompts, n_words = probe_prompts(model.tokenizer, args.prompts, opts.word_sample_seed)
    bs = opts.probe_llm_batch_size
    batches = [prompts[i:i + bs] for i in range(0, len(prompts), bs)]
    n_tokens = model.to_tokens(batches[0]).shape[1]

    def forward(batch, read_pos):
        with torch.no_grad(), stop_after_layer(model, layer, read_pos=read_pos):
            return model.run_with_cache(batch, names_filter=[hook])[1][hook][:, pos]

    forward(batches[0], None), forward(batches[0], pos)  # warm-up
    full_s = cut_s = 0.0
    identical = True
    for batch in batches:
        start = time.perf_counter()
        full_BD = forward(batch, None)
        full_s += time.perf_counter() - start
        start = time.perf_counter()
        cut_BD = forward(batch, pos)
        cut_s += time.perf_counter() - start
        identical &= torch.equal(full_BD, cut_BD)

    n = len(prompts)
    once = n_words + n_words // 5  # probe prompts + at most one fresh calculator prompt per test word
    print(f"{cfg.model.name} {hook} ({cfg.eval.llm_dtype}, {torch.get_num_threads()} torch threads), {n} probe prompts "
          f"of {n_tokens} tokens in batches of {bs}, word at position {pos}")
    print(f"sae-bench full prompt: {n / full_s:.1f} prompts/s; stopped at the word: {n / cut_s:.1f} prompts/s; "
          f"ratio {full_s / cut_s:.2f}x; activations bit-identical: {identical}")
    print(f"full vocabulary ({n_words} usable words, up to {once} prompts once per run): "
          f"{once * full_s / n / 60:.0f} min at sae-bench's forward, {once * cut_s / n / 60:.0f} min stopped at the word")


if __name__ == "__main__":
    main()
