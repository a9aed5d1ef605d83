"""Absorption metrics of eval.synthetic.metrics on a tiny SAELens synthetic hierarchy.

SAEs are built by hand (no training): an oracle (decoder = true dictionary, codes = true
activations), an SAE where chosen parents are absorbed into their children, one where they are half
absorbed, and degenerate ones (silent, parent latents gone, duplicated, rotated away). The same
scores on SAE folders through the eval path: tests/test_synthetic_adversarial.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_lens.synthetic import (
    HierarchyConfig,
    OrthogonalizationConfig,
    SyntheticModel,
    SyntheticModelConfig,
)

from eval.detection import detection_auc
from eval.synthetic.metrics import (
    HierarchyTruth,
    absorbed_parent_latents,
    carried_share,
    decoder_absorption,
    hierarchy_absorption_metrics,
    hierarchy_truth,
    parent_mass,
)

N_ROWS = 4096
ABSORBED_ROOTS = (0, 1)  # feature indices of two of the three roots


@pytest.fixture(scope="module")
def model() -> SyntheticModel:
    cfg = SyntheticModelConfig(
        num_features=96, hidden_dim=48,
        hierarchy=HierarchyConfig(total_root_nodes=3, branching_factor=(2, 3), max_depth=3,
                                  mutually_exclusive_portion=1.0, compensate_probabilities=True),
        orthogonalization=OrthogonalizationConfig(num_steps=50), seed=7)
    return SyntheticModel(cfg)


@pytest.fixture(scope="module")
def truth(model) -> HierarchyTruth:
    return hierarchy_truth(model)


@pytest.fixture(scope="module")
def G_BF(model) -> torch.Tensor:
    torch.manual_seed(0)
    return model.sample_with_features(N_ROWS)[1]


def children_of(truth: HierarchyTruth, p: int) -> torch.Tensor:
    return torch.nonzero(truth.parent_F == p).squeeze(1)


def with_child_fraction(truth: HierarchyTruth, G_BF: torch.Tensor, p: int) -> torch.Tensor:
    """Fraction of the rows where ``p`` fires on which one of its children fires too."""
    on_B = G_BF[:, p] > 0
    return (G_BF[on_B][:, children_of(truth, p)] > 0).any(dim=1).float().mean()


def absorbing_sae(truth: HierarchyTruth, G_BF: torch.Tensor, parents: tuple[int, ...],
                  alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle SAE except that each child latent of ``parents`` has decoder ~ v_c + alpha v_p and
    carries that much of the parent; the parent latent keeps only the rest (silent if alpha = 1)."""
    W_dec_MD, A_BM = truth.V_FD.clone(), G_BF.clone()
    for p in parents:
        kids = children_of(truth, p)
        direction_KD = truth.V_FD[kids] + alpha * truth.V_FD[p]
        W_dec_MD[kids] = direction_KD / direction_KD.norm(dim=1, keepdim=True)
        A_BM[:, kids] = G_BF[:, kids] * direction_KD.norm(dim=1)
        child_fires_B = (G_BF[:, kids] > 0).any(dim=1)
        A_BM[:, p] = torch.where(child_fires_B, (1 - alpha) * G_BF[:, p], G_BF[:, p])
    return W_dec_MD, A_BM


def test_truth_matches_the_hierarchy(model, truth):
    roots = [r.feature_index for r in model.hierarchy.roots]
    assert roots == [0, 1, 2]
    assert (truth.parent_F[roots] == -1).all() and (truth.depth_F[roots] == 0).all()
    for r in model.hierarchy.roots:
        for child in r.children:
            assert truth.parent_F[child.feature_index] == r.feature_index
    has_parent_F = truth.parent_F >= 0
    assert (truth.depth_F[has_parent_F] == truth.depth_F[truth.parent_F[has_parent_F]] + 1).all()
    assert truth.depth_F.max() == 3


def test_oracle_scores_no_absorption(truth, G_BF):
    m = hierarchy_absorption_metrics(truth, truth.V_FD, G_BF, G_BF)
    # Each parent's own latent is its true vector and fires at its true activation: own = g exactly.
    assert m["absorption_rate"] < 1e-5 and m["absorption_rate/all_depths"] < 1e-5
    assert m["absorbed_share"] < 1e-5 and m["lost_share"] < 1e-5
    assert m["fully_absorbed_fraction"] == 0.0 and m["unmatched_parent_fraction"] == 0.0
    assert m["own_latents_per_parent"] == 1.0
    assert m["carried_share"] < 0.02 and m["carried_share_lost_rows"] == 0.0
    assert m["decoder_absorption"] == 0.0
    assert m["n_parents_scored"] >= 5 and m["n_pairs_scored"] >= 20 and m["n_parent_rows"] > 100
    for d in (0, 1, 2):
        assert m[f"absorption_rate/depth{d}"] < 1e-5 and m[f"carried_share/depth{d}"] < 0.02
        assert m[f"decoder_absorption/depth{d}"] == 0.0


def test_model_can_be_passed_directly(model, truth, G_BF):
    assert hierarchy_absorption_metrics(model, truth.V_FD, G_BF, G_BF) == \
        hierarchy_absorption_metrics(truth, truth.V_FD, G_BF, G_BF)


def test_absorbing_sae_scores_absorption(truth, G_BF):
    W_dec_MD, A_BM = absorbing_sae(truth, G_BF, ABSORBED_ROOTS)
    m = hierarchy_absorption_metrics(truth, W_dec_MD, A_BM, G_BF)
    oracle = hierarchy_absorption_metrics(truth, truth.V_FD, G_BF, G_BF)
    assert m["absorption_rate/depth0"] > 0.3
    assert m["absorption_rate"] > oracle["absorption_rate"] + 0.1
    assert m["fully_absorbed_fraction"] == pytest.approx(len(ABSORBED_ROOTS) / m["n_parents_scored"])
    assert m["decoder_absorption/depth0"] > 0.3 and m["decoder_absorption"] > 0.0
    assert m["decoder_absorption/depth1"] == 0.0

    # The parent latent still carries p on the rows where p fires without a child; on the others the
    # child latents carry all of it (absorbed, not lost). Both definitions agree here.
    for share in (parent_mass(truth, W_dec_MD, A_BM, G_BF), carried_share(truth, W_dec_MD, A_BM, G_BF)):
        absorbed_P = torch.isin(share.parent_P, torch.tensor(ABSORBED_ROOTS))
        expected_P = torch.stack([with_child_fraction(truth, G_BF, p) for p in share.parent_P[absorbed_P]])
        assert torch.allclose(share.share_P[absorbed_P], expected_P, atol=1e-5)
        assert (share.share_P[absorbed_P] > 0.5).all()
        assert (share.share_P[~absorbed_P] < 0.02).all()
        assert (share.latent_P[absorbed_P] == share.parent_P[absorbed_P]).all()
    # Almost all absorbed, little lost: on a child row the child latent carries g_c (1 - s^2) along v_p.
    mass = parent_mass(truth, W_dec_MD, A_BM, G_BF)
    absorbed_P = torch.isin(mass.parent_P, torch.tensor(ABSORBED_ROOTS))
    assert (mass.absorbed_P[absorbed_P] > 0.95 * mass.share_P[absorbed_P]).all()
    assert torch.allclose(mass.absorbed_P + mass.lost_P, mass.share_P, atol=1e-6)


def test_partial_absorption_scores_the_analytic_share(truth, G_BF):
    """Child rows: own = g_p / 2 (the parent latent's code) and other = g_c (1 - s^2) / 2 (the child
    latent d ~ v_c + v_p / 2 beyond its own feature); share = 1 - own / max(g_p, own + other)."""
    W_dec_MD, A_BM = absorbing_sae(truth, G_BF, ABSORBED_ROOTS, alpha=0.5)
    mass = parent_mass(truth, W_dec_MD, A_BM, G_BF)
    absorbed_P = torch.isin(mass.parent_P, torch.tensor(ABSORBED_ROOTS))
    for p, got, got_absorbed in zip(mass.parent_P[absorbed_P].tolist(), mass.share_P[absorbed_P],
                                    mass.absorbed_P[absorbed_P], strict=True):
        kids = children_of(truth, p)
        s_K = truth.V_FD[kids] @ truth.V_FD[p]
        G_bF = G_BF[G_BF[:, p] > 0]
        g_b = G_bF[:, p]
        own_b = torch.where((G_bF[:, kids] > 0).any(dim=1), 0.5 * g_b, g_b)
        other_b = (G_bF[:, kids] * 0.5 * (1 - s_K**2)).sum(dim=1)
        mass_b = torch.maximum(g_b, own_b + other_b)
        assert got == pytest.approx(float((1 - own_b / mass_b).mean()), abs=1e-5)
        assert got_absorbed == pytest.approx(float((other_b / mass_b).mean()), abs=1e-5)
        assert 0.2 < got < 0.6


def test_partial_absorption_scores_a_partial_carried_share(truth, G_BF):
    W_dec_MD, A_BM = absorbing_sae(truth, G_BF, ABSORBED_ROOTS, alpha=0.5)
    share = carried_share(truth, W_dec_MD, A_BM, G_BF)
    absorbed_P = torch.isin(share.parent_P, torch.tensor(ABSORBED_ROOTS))
    # A row where child c fires: own = 1/2, other = (v_c + v_p/2) . (v_p - s v_c) = (1 - s^2) / 2,
    # with s = v_c . v_p; a row where p fires alone has share 0.
    for p, got in zip(share.parent_P[absorbed_P].tolist(), share.share_P[absorbed_P], strict=True):
        kids = children_of(truth, p)
        s_K = truth.V_FD[kids] @ truth.V_FD[p]
        on_B = G_BF[:, p] > 0
        row_share_B = ((G_BF[on_B][:, kids] > 0).float() * ((1 - s_K**2) / (2 - s_K**2))).sum(dim=1)
        assert got == pytest.approx(float(row_share_B.mean()), abs=1e-5)
        assert 0.2 < got < 0.5


def test_metrics_ignore_decoder_row_norms(truth, G_BF):
    W_dec_MD, A_BM = absorbing_sae(truth, G_BF, ABSORBED_ROOTS)
    scale_M1 = torch.exp(torch.randn(W_dec_MD.shape[0], 1, generator=torch.Generator().manual_seed(1)))
    plain = hierarchy_absorption_metrics(truth, W_dec_MD, A_BM, G_BF)
    scaled = hierarchy_absorption_metrics(truth, W_dec_MD * scale_M1, A_BM, G_BF)
    assert plain.keys() == scaled.keys()
    for name, value in plain.items():
        assert scaled[name] == pytest.approx(value, abs=1e-6), name
    geometry = decoder_absorption(truth, W_dec_MD * scale_M1)
    assert torch.allclose(geometry.gain_Q, decoder_absorption(truth, W_dec_MD).gain_Q, atol=1e-6)


def test_absorbed_parent_latents_are_detected(truth, G_BF):
    W_dec_MD, A_BM = absorbing_sae(truth, G_BF, ABSORBED_ROOTS)
    share = parent_mass(truth, W_dec_MD, A_BM, G_BF)
    mask_M = absorbed_parent_latents(share, W_dec_MD.shape[0])
    assert torch.nonzero(mask_M).squeeze(1).tolist() == list(ABSORBED_ROOTS)
    assert detection_auc(mask_M.float(), mask_M) == 1.0
    assert detection_auc(-mask_M.float(), mask_M) == 0.0
    assert not absorbed_parent_latents(share, W_dec_MD.shape[0], depths=(1, 2)).any()


def test_detection_auc_edge_cases():
    mask_M = torch.tensor([True, False, False, True, False])
    assert detection_auc(torch.full((5,), 3.0), mask_M) == 0.5
    assert math.isnan(detection_auc(torch.arange(5.0), torch.zeros(5, dtype=torch.bool)))
    assert math.isnan(detection_auc(torch.arange(5.0), torch.ones(5, dtype=torch.bool)))
    assert detection_auc(np.array([0.9, np.nan, 0.1, 0.8, 0.2]), mask_M.numpy()) == 1.0


def test_detection_auc_matches_pairwise_count():
    rng = np.random.default_rng(0)
    for _ in range(5):
        stat_M = rng.integers(0, 6, size=200).astype(float)  # small integer range: many ties
        mask_M = rng.random(200) < 0.3
        pos, neg = stat_M[mask_M], stat_M[~mask_M]
        wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        assert detection_auc(stat_M, mask_M) == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)


def test_chunking_and_sparse_truth_do_not_change_the_result(truth, G_BF):
    W_dec_MD, A_BM = absorbing_sae(truth, G_BF, ABSORBED_ROOTS, alpha=0.5)
    whole = hierarchy_absorption_metrics(truth, W_dec_MD, A_BM, G_BF)
    chunked = hierarchy_absorption_metrics(truth, W_dec_MD, A_BM, G_BF.to_sparse(), chunk_size=37)
    assert chunked == pytest.approx(whole, abs=1e-6, nan_ok=True)


def test_dropped_parent_counts_as_lost(truth, G_BF):
    """Parent latent silent with a child, child latents pure: nothing carries p on those rows. The
    absorbed-or-lost share counts them (as lost); the carried share scores them 0."""
    A_BM = G_BF.clone()
    p = ABSORBED_ROOTS[0]
    A_BM[:, p] *= ~(G_BF[:, children_of(truth, p)] > 0).any(dim=1)
    mass = parent_mass(truth, truth.V_FD, A_BM, G_BF)
    at_p = mass.parent_P == p
    expected = with_child_fraction(truth, G_BF, p).item()
    assert mass.share_P[at_p].item() == pytest.approx(expected, abs=1e-6)
    assert mass.lost_P[at_p].item() == pytest.approx(expected, abs=1e-6) and mass.absorbed_P[at_p].item() < 1e-6
    share = carried_share(truth, truth.V_FD, A_BM, G_BF)
    assert share.share_P[share.parent_P == p].item() < 1e-6
    assert share.lost_P[share.parent_P == p].item() == pytest.approx(expected, abs=1e-6)
    m = hierarchy_absorption_metrics(truth, truth.V_FD, A_BM, G_BF)
    assert m["lost_share/depth0"] > 0.1 and m["carried_share_lost_rows"] > 0.0


def test_silent_sae_is_all_lost(truth, G_BF):
    m = hierarchy_absorption_metrics(truth, truth.V_FD, torch.zeros_like(G_BF), G_BF)
    assert m["absorption_rate"] == 1.0 and m["lost_share"] == 1.0 and m["absorbed_share"] == 0.0
    assert m["fully_absorbed_fraction"] == 1.0
    assert m["carried_share"] == 0.0 and m["carried_share_lost_rows"] == 1.0  # the flaw it replaces
    negative = hierarchy_absorption_metrics(truth, truth.V_FD, -G_BF, G_BF)  # negative codes carry nothing
    assert negative["absorption_rate"] == 1.0 and negative["lost_share"] == 1.0


def test_parent_without_a_latent_is_never_own(truth, G_BF):
    """Absorbed roots whose parent latents point elsewhere: p's nearest latent is now an absorbing child
    latent (f = the child), which the carried share took for p's own latent."""
    W_dec_MD, A_BM = absorbing_sae(truth, G_BF, ABSORBED_ROOTS)
    gen = torch.Generator().manual_seed(3)
    for p in ABSORBED_ROOTS:
        W_dec_MD[p] = torch.randn(W_dec_MD.shape[1], generator=gen)
        A_BM[:, p] = 0.0
    mass = parent_mass(truth, W_dec_MD, A_BM, G_BF)
    at_P = torch.isin(mass.parent_P, torch.tensor(ABSORBED_ROOTS))
    assert (mass.latent_P[at_P] == -1).all() and (mass.n_own_P[at_P] == 0).all()
    assert torch.allclose(mass.share_P[at_P], torch.ones(int(at_P.sum())))
    assert (mass.latent_P[~at_P] == mass.parent_P[~at_P]).all()
    share = carried_share(truth, W_dec_MD, A_BM, G_BF)
    child_P = truth.parent_F[share.latent_P[at_P]]
    assert (child_P == share.parent_P[at_P]).all()  # matched to a child latent
    assert (share.share_P[at_P] < 0.9).all()  # that child's parent component counted as own
    m = hierarchy_absorption_metrics(truth, W_dec_MD, A_BM, G_BF)
    assert m["unmatched_parent_fraction/depth0"] == pytest.approx(len(ABSORBED_ROOTS) / 3)


def test_duplicate_parent_latents_are_own(truth, G_BF):
    """Each root's latent split into two identical latents at half activation: the same reconstruction.
    Every latent aligned with p is own, so the share is unchanged; the carried share saw one copy."""
    W_dec_MD, A_BM = absorbing_sae(truth, G_BF, ABSORBED_ROOTS, alpha=0.5)
    roots = [0, 1, 2]
    W_dup_MD = torch.cat([W_dec_MD, W_dec_MD[roots]])
    A_dup_BM = torch.cat([A_BM, A_BM[:, roots] / 2], dim=1)
    A_dup_BM[:, roots] /= 2
    plain, dup = parent_mass(truth, W_dec_MD, A_BM, G_BF), parent_mass(truth, W_dup_MD, A_dup_BM, G_BF)
    assert torch.allclose(plain.share_P, dup.share_P, atol=1e-6)
    assert torch.allclose(plain.absorbed_P, dup.absorbed_P, atol=1e-6)
    at_P = torch.isin(dup.parent_P, torch.tensor(roots))
    assert (dup.n_own_P[at_P] == 2).all() and (dup.n_own_P[~at_P] == 1).all()
    old = carried_share(truth, W_dup_MD, A_dup_BM, G_BF)
    unabsorbed_P = at_P & ~torch.isin(old.parent_P, torch.tensor(ABSORBED_ROOTS))
    assert (old.share_P[unabsorbed_P] < 0.02).all()  # untouched root: own = g / 2, other = 0
    absorbed_P = torch.isin(old.parent_P, torch.tensor(ABSORBED_ROOTS))
    plain_old = carried_share(truth, W_dec_MD, A_BM, G_BF)
    assert (old.share_P[absorbed_P] > plain_old.share_P[absorbed_P] + 0.05).all()  # half of own invisible


def test_own_latents_need_the_minimum_cosine(truth, G_BF):
    """Root 2's latent rotated to cos 0.45 with v_2 (still its nearest latent, still nearest to v_2)."""
    W_dec_MD, A_BM = truth.V_FD.clone(), G_BF.clone()
    v = truth.V_FD[2]
    u = torch.randn(v.shape[0], generator=torch.Generator().manual_seed(5))
    u = u - (u @ v) * v  # orthogonal to v_2
    u = u / u.norm()
    others_F = torch.arange(truth.V_FD.shape[0]) != 2
    assert (truth.V_FD[others_F] @ v).max() < 0.45  # the rotated latent stays v_2's nearest latent
    for c, expect_own in ((0.45, False), (0.55, True)):
        W_dec_MD[2] = c * v + (1 - c**2) ** 0.5 * u
        mass = parent_mass(truth, W_dec_MD, A_BM, G_BF)
        cos = float(torch.nn.functional.cosine_similarity(W_dec_MD[2:3], truth.V_FD[2:3]))
        assert cos == pytest.approx(c, abs=1e-5)
        at = mass.parent_P == 2
        assert int((truth.V_FD @ W_dec_MD[2]).argmax()) == 2  # still nearest to v_2: only the cosine decides
        assert (mass.latent_P[at] >= 0).item() is expect_own
        # Own latents count with their whole code (the true activation here), whatever their cosine.
        assert mass.share_P[at].item() == pytest.approx(0.0 if expect_own else 1.0, abs=1e-5)


def test_lost_below_treats_a_faint_carry_as_lost(truth, G_BF):
    """Child latents carry 5% of p while the parent latent is silent on their rows."""
    W_dec_MD, A_BM = absorbing_sae(truth, G_BF, ABSORBED_ROOTS, alpha=0.05)
    for p in ABSORBED_ROOTS:
        A_BM[:, p] *= ~(G_BF[:, children_of(truth, p)] > 0).any(dim=1)
    strict = carried_share(truth, W_dec_MD, A_BM, G_BF)
    floored = carried_share(truth, W_dec_MD, A_BM, G_BF, lost_below=0.1)
    absorbed_P = torch.isin(strict.parent_P, torch.tensor(ABSORBED_ROOTS))
    expected_P = torch.stack([with_child_fraction(truth, G_BF, p) for p in ABSORBED_ROOTS])
    assert torch.allclose(strict.share_P[absorbed_P], expected_P, atol=1e-5)
    assert torch.allclose(floored.lost_P[absorbed_P], expected_P, atol=1e-5)
    assert (floored.share_P[absorbed_P] < 1e-6).all()


def test_detection_aucs_score_the_last_snapshot_and_earlier_points_of_training():
    import numpy as np
    import pandas as pd

    from eval.detection import detection_aucs

    m = 40
    positives = np.zeros(m, dtype=bool)
    positives[:10] = True
    frames = []
    for step in (0, 25, 50, 75, 100):
        informative = step >= 75  # the statistic separates only late in training
        freq = np.where(positives, 1.0, 0.0) if informative else (np.arange(m) % 2).astype(float)
        frames.append(pd.DataFrame({"step": step, "latent": np.arange(m), "frequency": freq,
                                    "consistency": 1.0 - freq}))
    aucs = detection_aucs(pd.concat(frames), positives)
    assert aucs["detect_auc_frequency"] == 1.0 and aucs["detect_auc_inconsistency"] == 1.0
    assert aucs["detect_auc_frequency@75"] == 1.0
    assert aucs["detect_auc_frequency@25"] == aucs["detect_auc_frequency@50"] == 0.5
    assert "detect_auc_hole_rate" not in aucs  # not recorded, not reported
