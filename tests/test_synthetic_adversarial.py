"""Degenerate SAEs against the ground-truth absorption headline, on the synth-tiny preset.

A TopK SAE is trained on synth-tiny; SAE folders are derived from it (and from the true dictionary)
and scored by the real ``synthetic`` eval (``pipeline.evaluate.run_eval_task``): an SAE that never
fires, the trained SAE with its parent latents silenced or removed, with its parents' own latents
duplicated, a random SAE, and an oracle whose decoder is the true dictionary. None of the degenerate
SAEs may score a lower ``absorption_rate`` than the trained one; the oracle scores about 0.

``.venv/bin/python -m tests.test_synthetic_adversarial`` prints the table of docs/SYNTHETIC.md.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

TRAINED = "topk_s0"
DEGENERATE = ("silent", "parents_silenced", "parents_removed", "parents_duplicated", "random")
DUPLICATE_SLACK = 0.01  # the copies take TopK slots, so the duplicated SAE is the same function on most rows only
ORACLE_TOLERANCE = 0.05  # the oracle's encoder is linear: crosstalk between 128 features in 32 dims
ORACLE_THRESHOLD = 1.0  # the oracle's JumpReLU threshold
REPORTED = ("absorption_rate", "absorbed_share", "lost_share", "unmatched_parent_fraction",
            "own_latents_per_parent", "carried_share", "carried_share_lost_rows", "explained_variance", "l0")


def _cfg():
    from pipeline.config import apply_overrides, get_preset

    return apply_overrides(get_preset("synth-tiny"), ['train.trainers=["topk"]'])


def _write_folder(run_dir: Path, name: str, weights: dict[str, torch.Tensor], *, architecture: str = "topk",
                  k: int | None = None) -> None:
    """An SAE folder in the trained-SAE schema, modelled on the trained SAE's: weights, SAELens's
    cfg.json, and sae_meta.json last."""
    from safetensors.torch import save_file

    from fc_base.sae_folder import META_FILE, SAELENS_CFG_FILE, SAES_DIR, WEIGHTS_FILE, SAEMeta

    template, folder = run_dir / SAES_DIR / TRAINED, run_dir / SAES_DIR / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    save_file({key: t.detach().float().contiguous() for key, t in weights.items()}, str(folder / WEIGHTS_FILE))
    meta = SAEMeta.read(template)
    d_sae = weights["W_dec"].shape[0]
    cfg = json.loads((template / SAELENS_CFG_FILE).read_text())
    cfg.update(d_sae=d_sae, architecture={"topk": "topk", "jumprelu": "jumprelu"}[architecture])
    if architecture == "topk":
        cfg["k"] = k if k is not None else meta.k
    else:
        cfg.pop("k", None)
        cfg.pop("rescale_acts_by_decoder_norm", None)
    (folder / SAELENS_CFG_FILE).write_text(json.dumps(cfg, indent=2))
    dataclasses.replace(meta, name=name, trainer=name, architecture=architecture, d_sae=d_sae,
                        k=cfg.get("k"), l0_target=cfg.get("k")).write(folder)
    assert (folder / META_FILE).is_file()


def _unit(X_ND: torch.Tensor) -> torch.Tensor:
    return X_ND / X_ND.norm(dim=1, keepdim=True)


def _hierarchy_blind_filters(V_FD: torch.Tensor, parent_F: torch.Tensor) -> torch.Tensor:
    """W_enc (D x F) of the oracle: each feature's matched filter made blind to the features that fire
    with it (its ancestors, children and grandchildren), scaled so that w_f . v_f = 1."""
    Vh_FD = _unit(V_FD)
    W_DF = Vh_FD.T.clone()
    for f in range(V_FD.shape[0]):  # test set-up, 128 features
        family, a = [], int(parent_F[f])
        while a >= 0:
            family.append(a)
            a = int(parent_F[a])
        children = torch.nonzero(parent_F == f).squeeze(1)
        grandchildren = torch.nonzero(torch.isin(parent_F, children)).squeeze(1)
        family += children.tolist() + grandchildren.tolist()
        if family:
            Q_Dn, _ = torch.linalg.qr(Vh_FD[family].T)
            w_D = Vh_FD[f] - Q_Dn @ (Q_Dn.T @ Vh_FD[f])
            W_DF[:, f] = w_D / (w_D @ Vh_FD[f])
    return W_DF


def build_adversarial_saes(run_dir: Path, model, *, extra: bool = False) -> list[str]:
    """Write the degenerate SAEs and the oracle next to the trained SAE; returns their names.
    ``extra`` adds ``parents_duplicated_full`` (copies at full weight: the parents reconstructed twice)."""
    from eval.sae import load_sae, load_weights
    from eval.synthetic.metrics import hierarchy_truth
    from fc_base.sae_folder import SAES_DIR, SAEMeta
    from pipeline.synthetic_models import sample_batches

    folder = run_dir / SAES_DIR / TRAINED
    W = load_weights(folder, SAEMeta.read(folder))
    truth = hierarchy_truth(model)
    parents_P = torch.unique(truth.parent_F[truth.parent_F >= 0])
    C_MF = _unit(W["W_dec"]) @ _unit(truth.V_FD).T
    parent_latent_M = torch.isin(C_MF.argmax(dim=1), parents_P)  # latents whose nearest feature is a parent
    head_P = parents_P[truth.depth_F[parents_P] <= 1]
    best_P = C_MF[:, head_P].argmax(dim=0)
    own_P = best_P[(C_MF.argmax(dim=1)[best_P] == head_P) & (C_MF[best_P, head_P] > 0.5)]  # mutual matches
    acts_ND, _ = next(iter(sample_batches(model, 4096, 4096, seed=7)))  # not the eval's held-out rows
    freq_M = (load_sae(folder).encode(acts_ND) > 0).float().mean(dim=0)
    spare_M = torch.argsort(freq_M.masked_fill(parent_latent_M, float("inf")))[:len(own_P)]  # least used

    def edited(**changes) -> dict[str, torch.Tensor]:
        return {key: changes.get(key, t).clone() for key, t in W.items()}

    def never_firing(mask_M: torch.Tensor, W_dec_MD: torch.Tensor) -> dict[str, torch.Tensor]:
        return edited(W_enc=W["W_enc"] * ~mask_M, b_enc=torch.where(mask_M, -1.0, W["b_enc"]), W_dec=W_dec_MD)

    rand_MD = _unit(torch.randn(W["W_dec"].shape, generator=torch.Generator().manual_seed(0)))
    _write_folder(run_dir, "silent", never_firing(torch.ones_like(parent_latent_M), W["W_dec"]))
    _write_folder(run_dir, "parents_silenced", never_firing(parent_latent_M, W["W_dec"]))
    _write_folder(run_dir, "parents_removed",
                  never_firing(parent_latent_M, torch.where(parent_latent_M[:, None], rand_MD, W["W_dec"])))
    # (a removed latent points in a random direction: the decoder refuses all-zero rows)
    for name, weight in (("parents_duplicated", 0.5), ("parents_duplicated_full", 1.0))[:2 if extra else 1]:
        # Each own latent copied (encoder, bias, decoder) over a least-used latent; at weight 0.5 both
        # copies' decoders are halved, so the SAE computes the same function as before.
        dup = edited()
        dup["W_enc"][:, spare_M] = W["W_enc"][:, own_P]
        dup["b_enc"][spare_M] = W["b_enc"][own_P]
        dup["W_dec"][spare_M] = W["W_dec"][own_P] * weight
        dup["W_dec"][own_P] = W["W_dec"][own_P] * weight
        _write_folder(run_dir, name, dup)
    _write_folder(run_dir, "random", {"W_dec": rand_MD, "W_enc": rand_MD.T, "b_enc": torch.zeros(rand_MD.shape[0]),
                                      "b_dec": torch.zeros(rand_MD.shape[1])})
    F = truth.V_FD.shape[0]
    _write_folder(run_dir, "oracle", {"W_dec": truth.V_FD, "W_enc": _hierarchy_blind_filters(truth.V_FD, truth.parent_F),
                                      "b_enc": torch.zeros(F), "b_dec": model.feature_dict.bias.detach(),
                                      "threshold": torch.full((F,), ORACLE_THRESHOLD)},
                  architecture="jumprelu")
    return [*DEGENERATE, *(["parents_duplicated_full"] if extra else []), "oracle"]


def score(cfg, run_dir: Path, name: str) -> dict[str, float]:
    """The synthetic eval's rows of one SAE, through the pipeline's task runner."""
    from pipeline.evaluate import run_eval_task

    rows = json.loads(run_eval_task(cfg, run_dir, name, "synthetic").read_text())["rows"]
    assert rows and all(r["status"] == "ok" for r in rows), rows[:1]
    return {r["metric"]: r["value"] for r in rows}


def adversarial_scores(run_dir: Path, *, extra: bool = False) -> dict[str, dict[str, float]]:
    """Harvest synth-tiny, train its TopK SAE, build the adversarial SAEs and score every one."""
    from pipeline.evaluate import synthetic_model
    from pipeline.harvest import harvest
    from pipeline.synthetic_models import config_hash, synthetic_config
    from pipeline.train import train

    cfg = _cfg()
    harvest(cfg, run_dir, progress=False)
    train(cfg, run_dir, progress=False)
    model = synthetic_model(cfg, config_hash(synthetic_config(cfg.model.name)))
    names = [TRAINED, *build_adversarial_saes(run_dir, model, extra=extra)]
    return {name: score(cfg, run_dir, name) for name in names}


@pytest.fixture(scope="module")
def scores(tmp_path_factory) -> dict[str, dict[str, float]]:
    return adversarial_scores(tmp_path_factory.mktemp("adversarial") / "run")


def test_the_trained_sae_is_partly_absorbed(scores):
    trained = scores[TRAINED]
    assert 0.3 < trained["absorption_rate"] < 0.95
    assert trained["absorption_rate"] == pytest.approx(trained["absorbed_share"] + trained["lost_share"], abs=1e-6)
    assert trained["n_parents_scored"] == 5.0 and trained["explained_variance"] > 0.5


@pytest.mark.parametrize("name", DEGENERATE)
def test_no_degenerate_sae_scores_below_the_trained_one(scores, name):
    slack = DUPLICATE_SLACK if name == "parents_duplicated" else 0.0
    assert scores[name]["absorption_rate"] >= scores[TRAINED]["absorption_rate"] - slack, \
        {key: (scores[name][key], scores[TRAINED][key]) for key in REPORTED}


def test_saes_that_lose_their_parents_score_one(scores):
    for name in ("silent", "parents_silenced", "parents_removed"):
        assert scores[name]["absorption_rate"] == pytest.approx(1.0), name
    assert scores["silent"]["lost_share"] == pytest.approx(1.0)
    assert scores["parents_removed"]["unmatched_parent_fraction"] == 1.0
    assert scores["parents_silenced"]["unmatched_parent_fraction"] == scores[TRAINED]["unmatched_parent_fraction"]
    # The carried share these replace: lost rows scored 0, so the silent SAE was perfect.
    assert scores["silent"]["carried_share"] == 0.0 and scores["silent"]["carried_share_lost_rows"] == 1.0


def test_duplicates_are_own_latents(scores):
    """The same function (but for the TopK slots the copies take), every own latent in two halves: both
    halves count, the score stays put."""
    dup, trained = scores["parents_duplicated"], scores[TRAINED]
    assert dup["explained_variance"] == pytest.approx(trained["explained_variance"], abs=0.02)
    assert dup["own_latents_per_parent"] > trained["own_latents_per_parent"]
    assert dup["absorption_rate"] == pytest.approx(trained["absorption_rate"], abs=0.02)
    assert dup["unmatched_parent_fraction"] == trained["unmatched_parent_fraction"]


def test_random_sae_has_few_own_latents(scores):
    assert scores["random"]["unmatched_parent_fraction"] >= 0.6
    assert scores["random"]["absorption_rate"] > 0.8


def test_oracle_scores_about_zero(scores):
    oracle = scores["oracle"]
    assert oracle["absorption_rate"] < ORACLE_TOLERANCE and oracle["absorbed_share"] < 1e-6
    assert oracle["unmatched_parent_fraction"] == 0.0 and oracle["own_latents_per_parent"] == 1.0
    assert oracle["carried_share"] < 1e-6 and oracle["decoder_absorption"] == 0.0
    assert oracle["absorption_rate/all_depths"] < 2 * ORACLE_TOLERANCE


if __name__ == "__main__":  # the table of docs/SYNTHETIC.md
    import os
    import sys
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="fc-sae-adversarial-"))
    os.environ["FC_SAE_HOME"] = str(home)  # a private model cache, as the tests use
    import pipeline  # noqa: F401  (environment set-up before the first model import)

    table = adversarial_scores(home / "run", extra=True)
    print("| SAE | " + " | ".join(REPORTED) + " |")
    print("|---|" + "---|" * len(REPORTED))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[key]:.3f}" for key in REPORTED) + " |")
    shutil.rmtree(home, ignore_errors=True)
