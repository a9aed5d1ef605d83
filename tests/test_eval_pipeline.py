"""The evaluate stage on the tiny model with the real sae-bench code (evaluated once per session)."""
from __future__ import annotations

import json

import pytest

from eval.results import COLUMNS, load, print_table, problems
from tests.eval_helpers import EVALS, SAE_SPECS, evaluated_run, tiny_config

ABSORPTION_METRICS = {"mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features"}


@pytest.fixture(scope="module")
def run_dir():
    return evaluated_run()


@pytest.fixture(scope="module")
def table(run_dir):
    return load(run_dir)


def test_table_has_the_contract_columns_and_one_task_file_per_sae_and_eval(run_dir, table):
    assert list(table.columns) == list(COLUMNS)
    for name, *_ in SAE_SPECS:
        for ev in EVALS:
            assert (run_dir / "eval" / name / f"{ev}.json").is_file()
    assert set(zip(table["sae"], table["eval"])) == {(n, e) for n, *_ in SAE_SPECS for e in EVALS}


def test_absorption_rows_use_sae_bench_metric_names_and_keep_every_letter(table):
    absorption = table[(table["eval"] == "absorption")]
    ok = absorption[absorption["status"] == "ok"]
    assert ok["value"].notna().all()
    for name, *_ in SAE_SPECS:
        rows = ok[ok["sae"] == name].set_index("metric")["value"]
        assert ABSORPTION_METRICS <= set(rows.index)
        assert 0.0 <= rows["mean_absorption_fraction_score"] <= 1.0
        assert 0.0 <= rows["mean_full_absorption_score"] <= 1.0
        assert rows["mean_num_split_features"] >= 1.0
        assert rows["n_letters_evaluated"] >= 20  # sae-bench's rule passed on the tiny model
        letters = [m for m in rows.index if m.startswith("letter/") and m.endswith("/probe_f1")]
        assert len(letters) == 26
        # letters sae-bench left out: every per-letter metric skipped with the reason, none ok
        skipped = absorption[(absorption["sae"] == name) & (absorption["status"] != "ok")]
        assert (skipped["status"] == "skipped").all() and skipped["metric"].str.startswith("letter/").all()
        left_out = set(skipped["metric"].str.split("/").str[1])
        assert len(skipped) == 3 * len(left_out) and len(left_out) + rows["n_letters_evaluated"] == 26
        assert skipped["error"].str.match(r"first letter '[a-z]': .*sae-bench leaves the letter out").all()
        for letter in left_out:
            assert not any(m.startswith(f"letter/{letter}/") and not m.endswith("/probe_f1") for m in rows.index)
        # averaged over the configured k-sparse-probe seeds, their spread kept as the eval's own noise
        assert rows["n_probe_seeds"] == tiny_config().eval.options["absorption"]["probe_seeds"] == 2
        for metric in ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features"):
            assert rows[f"{metric}_eval_std"] >= 0.0
        assert rows["n_main_latents"] >= 1


def test_absorption_details_name_each_letters_latents(run_dir):
    """Per first letter, the main latents the calculator named and the absorbers that are not among
    them; together they are the run-level lists."""
    for name, *_ in SAE_SPECS:
        details = json.loads((run_dir / "eval" / name / "absorption.json").read_text())["details"]
        per_letter = details["letter_latents"]
        assert per_letter and set(per_letter) <= set("abcdefghijklmnopqrstuvwxyz")
        for roles in per_letter.values():
            assert not set(roles["main"]) & set(roles["absorbing"])
        mains = set().union(*(set(r["main"]) for r in per_letter.values()))
        absorbers = set().union(*(set(r["absorbing"]) for r in per_letter.values()))
        assert mains == set(details["main_latents"])
        assert absorbers - mains == set(details["absorbing_latents"])


def test_absorption_probe_and_prompt_activations_are_shared(run_dir):
    roots = list((run_dir / "eval_artifacts" / "absorption").iterdir())
    assert len(roots) == 1  # one (model, layer, word sample) for the whole run
    assert roots[0].name.endswith("_bs64")  # the probe's LLM batch size is part of its key
    probes = list(roots[0].glob("probes/**/probe.pth"))
    assert len(probes) == 1
    forwards = [json.loads((run_dir / "eval" / n / "absorption.json").read_text())["details"]["prompt_forwards"]
                for n in sorted(n for n, *_ in SAE_SPECS)]  # evaluation order
    assert forwards[0] > 0 and forwards[1:] == [0] * (len(SAE_SPECS) - 1)  # prompt activations shared
    # (across probe seeds too: the calculator's prompts do not depend on the probe seed)
    words = json.loads((roots[0] / "words.json").read_text())
    assert len(words) == tiny_config().eval.options["absorption"]["word_sample"] == len(set(words))


def test_k_sparse_scoring_gives_sae_bench_numbers_bit_for_bit(run_dir, tmp_path, monkeypatch):
    """eval.absorption.k_sparse against sae-bench's own raw scores, metrics and false-negative search, on the
    run's shared probe and one of its SAEs with k-sparse probes trained by sae-bench (fed by the
    batched loader, checked against torch's DataLoader)."""
    import torch
    from torch.utils.data import DataLoader

    from eval import runtime
    from sae_bench.evals.absorption import k_sparse_probing as ksp
    from sae_bench.evals.absorption.common import load_probe, load_probe_data_split_or_train
    from sae_bench.evals.absorption.feature_absorption import get_stats_and_likely_false_negative_tokens

    from eval.absorption import k_sparse
    from eval.absorption.main import AbsorptionOptions, ensure_probe
    from eval.runtime import private_sae_bench_rng
    from eval.sae import load_sae
    from fc_base.sae_folder import SAEMeta
    from pipeline.evaluate import hooked_model

    cfg = tiny_config()
    folder = run_dir / "saes" / "fc_topk_s0"
    meta = SAEMeta.read(folder)
    model = hooked_model(meta.model_name, meta.model_source, cfg)
    opts = cfg.eval.option(AbsorptionOptions)
    probe = ensure_probe(model, meta.layer, run_dir / "eval_artifacts", opts, cfg.eval)
    sae = load_sae(folder)
    split = dict(base_template="{word} has the first letter:", pos_idx=probe.token_pos, probes_dir=probe.probes_dir,
                 layer=meta.layer, device="cpu")
    train_acts, train_labels = load_probe_data_split_or_train(model, split="train", **split)
    test_acts, test_labels = load_probe_data_split_or_train(model, split="test", **split)
    max_k = 4
    with private_sae_bench_rng(7):
        k_probes = ksp.train_k_sparse_probes(sae, train_labels, train_acts, ks=list(range(1, max_k + 1)),
                                             num_epochs=5, precalc_sae_acts=True)
    with monkeypatch.context() as m:
        m.setattr(runtime, "batched_loader", DataLoader)  # rows fetched and stacked one by one
        with private_sae_bench_rng(7):
            ref_probes = ksp.train_k_sparse_probes(sae, train_labels, train_acts, ks=list(range(1, max_k + 1)),
                                                   num_epochs=5, precalc_sae_acts=True)
    for k in range(1, max_k + 1):
        for label, ref_probe in ref_probes[k].items():
            ours_probe = k_probes[k][label]
            assert torch.equal(ours_probe.feature_ids, ref_probe.feature_ids)
            assert torch.equal(ours_probe.weight, ref_probe.weight) and torch.equal(ours_probe.bias, ref_probe.bias)
    gt_probe = load_probe(model.cfg.model_name, meta.layer, probe.probes_dir, device="cpu")

    ref = ksp.eval_probe_and_sae_k_sparse_raw_scores(sae, gt_probe, k_probes, test_labels, test_acts)
    ours = k_sparse.raw_scores(sae, gt_probe, k_probes, test_labels, test_acts)
    assert len(ours) == len(ref) and list(ours["token"]) == list(ref["token"])
    assert set(ours.columns) == {c for c in ref.columns if not c.endswith("_acts")}
    for column in ours.columns:
        assert ours[column].tolist() == ref[column].tolist(), column  # exact, not approximate

    ref_metrics = ksp.build_metrics_df(ref, ksp.sae_k_sparse_metadata(sae, gt_probe, k_probes, "s", meta.layer),
                                       max_k_value=max_k)
    ksp.add_feature_splits_to_metrics_df(ref_metrics, max_k_value=max_k, f1_jump_threshold=0.03)
    our_metrics = k_sparse.metrics_frame(ours, k_probes, max_k, 0.03)
    for column in ["f1_probe"] + [f"f1_sparse_sae_{k}" for k in range(1, max_k + 1)] + ["num_split_features"]:
        assert our_metrics[column].tolist() == ref_metrics[column].tolist(), column
    assert our_metrics["split_feats"].tolist() == ref_metrics["split_feats"].tolist()

    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    ref.to_parquet(raw_dir / ksp.get_sparse_probing_raw_results_filename("s", meta.layer))
    ref_negs = get_stats_and_likely_false_negative_tokens(ref_metrics, "s", meta.layer, raw_dir)
    assert k_sparse.likely_false_negatives(our_metrics, ours) == ref_negs
    assert any(stats.potential_false_negatives for stats in ref_negs.values())  # the comparison saw words


def test_batched_loader_gives_dataloaders_batches():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from eval.runtime import batched_loader

    gen = torch.Generator().manual_seed(0)
    x_ND = torch.randn(1000, 16, generator=gen)
    y_NL = torch.nn.functional.one_hot(torch.randint(0, 26, (1000,), generator=gen)).float()
    for batch_size in (1000, 256, 300):
        ref = DataLoader(TensorDataset(x_ND, y_NL), batch_size=batch_size, shuffle=True,
                         generator=torch.Generator().manual_seed(5))
        ours = batched_loader(TensorDataset(x_ND, y_NL), batch_size=batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(5))
        assert len(ours) == len(ref)
        for _ in range(3):  # epochs: the generator is drawn from in the same way
            for (xr, yr), (xo, yo) in zip(ref, ours, strict=True):
                assert torch.equal(xr, xo) and torch.equal(yr, yo)


def test_core_rows_hold_reconstruction_and_sparsity(table):
    core = table[table["eval"] == "core"]
    assert (core["status"] == "ok").all(), core[["sae", "error"]].drop_duplicates()
    for name, *_ in SAE_SPECS:
        rows = core[core["sae"] == name].set_index("metric")["value"]
        assert rows["l0"] == pytest.approx(8.0)  # k of the TopK SAEs
        assert {"explained_variance", "mse", "cossim", "kl_div_score", "ce_loss_score"} <= set(rows.index)
        assert -1.0 <= rows["cossim"] <= 1.0


def test_sae_probes_rows(table):
    rows = table[table["eval"] == "sparse_probing_sae_probes"]
    assert (rows["status"] == "ok").all(), rows[["sae", "error"]].drop_duplicates()
    acc = rows[rows["metric"] == "sae_top_1_test_accuracy"]["value"]
    assert len(acc) == len(SAE_SPECS) and acc.between(0.0, 1.0).all()


def test_hub_eval_is_skipped_with_its_reason(table):
    scr = table[table["eval"] == "scr"]
    assert (scr["status"] == "skipped").all() and len(scr) == len(SAE_SPECS)
    assert scr["error"].str.contains("Hub").all()


def test_rows_carry_the_sae_metadata(table):
    fc = table[table["sae"] == "fc_topk_s0"]
    assert set(fc["trainer"]) == {"fc_topk"} and set(fc["seed"]) == {0}
    assert set(fc["d_sae"]) == {128} and set(fc["k"]) == {8} and set(fc["layer"]) == {tiny_config().model.layer}
    assert set(fc["run"]) == {"run"}
    import importlib.metadata as md

    versions = {name: md.version(name) for name in ("sae-bench", "sae-lens", "torch", "transformers")}
    assert all(json.loads(c)["packages"] == versions for c in table["eval_config"])


def test_a_task_file_that_does_not_name_its_package_versions_is_not_current(run_dir):
    from fc_base.sae_folder import SAES_DIR
    from pipeline.evaluate import _is_current, eval_settings

    path = run_dir / "eval" / "topk_s0" / "core.json"
    payload = json.loads(path.read_text())
    settings = eval_settings(tiny_config(), "core")
    assert _is_current(path, run_dir / SAES_DIR / "topk_s0", settings)
    old = {**payload, "rows": [{**r, "eval_config": json.dumps({k: v for k, v in json.loads(r["eval_config"]).items()
                                                                 if k != "packages"})} for r in payload["rows"]]}
    stale = run_dir / "eval" / "topk_s0" / "core_without_versions.json"
    stale.write_text(json.dumps(old))
    try:
        assert not _is_current(stale, run_dir / SAES_DIR / "topk_s0", settings)
    finally:
        stale.unlink()


def test_rerun_skips_finished_tasks(run_dir):
    from pipeline.evaluate import evaluate

    before = {p: p.stat().st_mtime_ns for p in (run_dir / "eval").glob("*/absorption.json")}
    evaluate(tiny_config(), run_dir, evals=["absorption"])
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_forced_failure_leaves_other_rows_and_a_failed_row(run_dir, tmp_path):
    from pipeline.config import apply_overrides
    from pipeline.evaluate import aggregate, run_eval_task

    cfg = apply_overrides(tiny_config(), ['eval.options.sae_probes.datasets=["no_such_dataset"]'])
    run_eval_task(cfg, run_dir, "topk_s1", "sparse_probing_sae_probes")
    aggregate(cfg, run_dir)
    table = load(run_dir)
    failed = table[(table["sae"] == "topk_s1") & (table["eval"] == "sparse_probing_sae_probes")]
    assert len(failed) == 1 and failed["status"].iloc[0] == "failed"
    assert "no_such_dataset" in failed["error"].iloc[0]
    others = table[(table["sae"] != "topk_s1") | (table["eval"] != "sparse_probing_sae_probes")]
    assert set(problems(others)["eval"]) == {"scr"}  # no other task failed or was skipped
    assert set(others[others["sae"] == "topk_s1"]["eval"]) == {"absorption", "core", "scr"}
    # Restore the good rows for the tests that follow.
    run_eval_task(tiny_config(), run_dir, "topk_s1", "sparse_probing_sae_probes", force=True)
    aggregate(tiny_config(), run_dir)


def test_results_table_prints_trainer_by_metric(run_dir, capsys):
    text = print_table(run_dir)
    assert "fc_topk" in text and "topk" in text
    assert "mean_absorption_fraction_score" in text and "(n=2)" in text  # two topk seeds
    assert "scr: skipped" in text
    assert "letter/" not in text
    assert capsys.readouterr().out.strip() == text.strip()


def test_bad_requests_raise_one_clear_error(run_dir):
    from eval.config import EvalConfigError
    from pipeline.evaluate import evaluate

    with pytest.raises(FileNotFoundError, match="no finished SAE 'nope'"):
        evaluate(tiny_config(), run_dir, saes=["nope"])
    with pytest.raises(EvalConfigError, match="unknown eval 'bogus'"):
        evaluate(tiny_config(), run_dir, evals=["bogus"])
    with pytest.raises(FileNotFoundError, match="no trained SAEs"):
        evaluate(tiny_config(), run_dir / "empty")


def test_every_registered_eval_runs_or_is_skipped_with_its_reason(run_dir):
    """The evals the session run leaves out need the network: offline each becomes a skipped row."""
    from eval.spec import eval_names
    from pipeline.evaluate import run_eval_task

    others = [name for name in eval_names() if name not in EVALS]
    assert others, "the session run already covers every eval"
    for name in others:
        rows = json.loads(run_eval_task(tiny_config(), run_dir, "topk_s0", name).read_text())["rows"]
        assert len(rows) == 1 and rows[0]["status"] == "skipped" and "needs" in rows[0]["error"], name
