"""The absorption eval's prompt forwards stop at the word: the tokens after the read position are not
run, and the activations there are bit-identical to sae-bench's full forward; a word sample larger
than the vocabulary runs the full vocabulary and says so."""
from __future__ import annotations

import random

import pytest
import torch

from pipeline.config import get_preset

HOOKS = ("hook_resid_post", "hook_mlp_out", "hook_attn_out")


@pytest.fixture(scope="module")
def hooked_tiny(tiny_model_dir):
    from pipeline.models import load_hooked_model

    cfg = get_preset("tiny")
    return load_hooked_model(cfg.model.name, source=cfg.model.source)


@pytest.fixture(scope="module")
def prompts(hooked_tiny):
    """sae-bench's probe prompts (10 in-context examples each) for 48 words of the tiny vocabulary."""
    from sae_bench.evals.absorption.prompting import create_icl_prompt, first_letter_formatter

    from eval.absorption.main import TEMPLATE, sample_words

    words = sample_words(hooked_tiny.tokenizer, 200, 0)
    rng_state = random.getstate()
    random.seed(0)
    try:
        return [create_icl_prompt(word=w, examples=words, answer_formatter=first_letter_formatter(),
                                  base_template=TEMPLATE, max_icl_examples=10,
                                  prepend_separator_to_first_example=True).base for w in words[:48]]
    finally:
        random.setstate(rng_state)


@pytest.mark.parametrize("kind", HOOKS)
def test_forward_stopped_at_the_word_is_bit_identical(hooked_tiny, prompts, kind):
    from eval.absorption.main import word_token_pos
    from eval.runtime import stop_after_layer

    hook = f"blocks.1.{kind}"
    pos = word_token_pos(hooked_tiny.tokenizer)
    with torch.no_grad(), stop_after_layer(hooked_tiny, 1):
        full_BTD = hooked_tiny.run_with_cache(prompts, names_filter=[hook])[1][hook]
    with torch.no_grad(), stop_after_layer(hooked_tiny, 1, read_pos=pos):
        cut_BTD = hooked_tiny.run_with_cache(prompts, names_filter=[hook])[1][hook]
    assert cut_BTD.shape == full_BTD.shape
    assert torch.equal(cut_BTD[:, pos], full_BTD[:, pos])
    assert not cut_BTD[:, pos + 1:].any()  # the tokens after the word were not run
    assert full_BTD[:, pos + 1:].abs().sum() > 0


def test_prompts_of_unequal_length_run_in_full(hooked_tiny, prompts):
    from eval.runtime import stop_after_layer

    hook = "blocks.1.hook_resid_post"
    batch = [prompts[0], prompts[1] + " and more words"]
    with torch.no_grad(), stop_after_layer(hooked_tiny, 1):
        full_BTD = hooked_tiny.run_with_cache(batch, names_filter=[hook])[1][hook]
    with torch.no_grad(), stop_after_layer(hooked_tiny, 1, read_pos=-6):
        same_BTD = hooked_tiny.run_with_cache(batch, names_filter=[hook])[1][hook]
    assert torch.equal(same_BTD, full_BTD)


def test_word_sample_larger_than_the_vocabulary_runs_it_all(hooked_tiny, capsys):
    from eval.absorption.main import sample_words

    usable = sample_words(hooked_tiny.tokenizer, None, 0)
    capsys.readouterr()
    words = sample_words(hooked_tiny.tokenizer, len(usable) + 1000, 0)
    assert sorted(words) == sorted(usable)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"exceeds the {len(usable)} usable vocabulary words; running the full vocabulary" in err[0]


def test_the_probe_build_reports_its_prompts(hooked_tiny, tmp_path):
    """The probe's prompt forwards count into the run's ``eval.absorption-probe`` progress record."""
    from eval.absorption.main import AbsorptionOptions, ensure_probe
    from fc_base.progress import read_records, run_scope

    cfg = get_preset("tiny")
    opts = AbsorptionOptions(word_sample=200, probe_seeds=1)
    with run_scope(tmp_path):
        probe = ensure_probe(hooked_tiny, 1, tmp_path / "eval_artifacts", opts, cfg.eval)
    (record,) = [r for r in read_records(tmp_path) if r.key == "eval.absorption-probe"]
    assert record.status == "done" and record.total == record.done == len(probe.words) == 200
    assert record.unit == "prompt"
