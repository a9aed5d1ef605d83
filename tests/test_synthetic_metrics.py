"""Absorption metrics of eval.synthetic_metrics on a tiny SAELens synthetic hierarchy.

SAEs are built by hand (no training): an oracle (decoder = true dictionary, codes = true
activations), an SAE where chosen parents are absorbed into their children, and one where they are
half absorbed.
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

from eval.synthetic_metrics import (
    HierarchyTruth,
    absorbed_parent_latents,
    carried_share,
    decoder_absorption,
    detection_auc,
    hierarchy_absorption_metrics,
    hierarchy_truth,
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
    assert m["absorption_rate"] < 0.02 and m["absorption_rate/all_depths"] < 0.02
    assert m["fully_absorbed_fraction"] == 0.0 and m["lost_fraction"] == 0.0
    assert m["decoder_absorption"] == 0.0
    assert m["n_parents_scored"] >= 5 and m["n_pairs_scored"] >= 20 and m["n_parent_rows"] > 100
    for d in (0, 1, 2):
        assert m[f"absorption_rate/depth{d}"] < 0.02
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

    share = carried_share(truth, W_dec_MD, A_BM, G_BF)
    absorbed_P = torch.isin(share.parent_P, torch.tensor(ABSORBED_ROOTS))
    # The parent latent still carries p on the rows where p fires without a child.
    expected_P = torch.stack([with_child_fraction(truth, G_BF, p) for p in share.parent_P[absorbed_P]])
    assert torch.allclose(share.share_P[absorbed_P], expected_P, atol=1e-5)
    assert (share.share_P[absorbed_P] > 0.5).all()
    assert (share.share_P[~absorbed_P] < 0.02).all()
    assert (share.latent_P[absorbed_P] == share.parent_P[absorbed_P]).all()


def test_partial_absorption_scores_a_partial_share(truth, G_BF):
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
    share = carried_share(truth, W_dec_MD, A_BM, G_BF)
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


def test_dropped_parent_counts_as_lost_not_absorbed(truth, G_BF):
    """Parent latent silent with a child, child latents pure: nothing carries p on those rows."""
    A_BM = G_BF.clone()
    p = ABSORBED_ROOTS[0]
    A_BM[:, p] *= ~(G_BF[:, children_of(truth, p)] > 0).any(dim=1)
    share = carried_share(truth, truth.V_FD, A_BM, G_BF)
    at_p = share.parent_P == p
    assert share.share_P[at_p].item() < 1e-6
    assert share.lost_P[at_p].item() == pytest.approx(with_child_fraction(truth, G_BF, p).item(), abs=1e-6)
    assert hierarchy_absorption_metrics(truth, truth.V_FD, A_BM, G_BF)["lost_fraction/depth0"] > 0.1


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
