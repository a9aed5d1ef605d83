"""Absorption repair (FC v2) on a planted absorbed pair: a child latent whose decoder is child +
parent, and a parent latent that is silent whenever the child fires."""
from __future__ import annotations

import pytest
import torch

from trainers.fc.repair import REPAIRS, repair_absorption
from trainers.fc.tracker import FrequencyConsistencyTracker
from trainers.saes.topk import TopKSAE

D, M = 16, 8


def planted(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    basis_DD, _ = torch.linalg.qr(torch.randn(D, D, generator=gen))
    v_p, v_c = basis_DD[:, 0], basis_DD[:, 1]
    n = 512
    with_child_N1 = (torch.arange(n) % 2 == 1).float()[:, None]
    x_ND = 2 * v_p + 2 * with_child_N1 * v_c + 0.02 * torch.randn(n, D, generator=gen)
    model = TopKSAE(D, M, k=1, generator=gen)
    absorbed = (v_p + v_c) / 2 ** 0.5
    with torch.no_grad():
        model.b_dec.zero_()
        model.b_enc.fill_(-5.0)
        model.b_enc[:2] = 0.0
        model.W_dec[0], model.W_dec[1] = v_p, absorbed
        model.W_enc[:, 0], model.W_enc[:, 1] = v_p, absorbed
    return model, x_ND, v_p, v_c


def trained_state(model, x_ND):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
    model.training_step(x_ND, torch.zeros(M, dtype=torch.bool)).loss.backward()
    optimizer.step()
    for state in optimizer.state.values():  # as after a long run: every moment non-zero
        state["exp_avg"].fill_(0.5)
        state["exp_avg_sq"].fill_(0.25)
    tracker = FrequencyConsistencyTracker(M, D, beta=0.9, hole_rows=64)
    for x_BD in x_ND.split(64):
        codes_BM = model.encode(x_BD)
        tracker.update(x_BD, codes_BM, model.b_dec.data, W_dec_MD=model.W_dec.data)
    return optimizer, tracker


def test_planted_pair_behaves_as_absorbed():
    model, x_ND, v_p, v_c = planted()
    codes_NM = model.encode(x_ND)
    assert bool((codes_NM[0::2, 0] > 0).all()) and bool((codes_NM[1::2, 0] == 0).all())
    assert bool((codes_NM[1::2, 1] > 0).all())
    optimizer, tracker = trained_state(model, x_ND)
    assert int(tracker.hole_score.argmax()) == 0
    assert float(tracker.hole_rate[0]) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("mode", ["decoder", "encoder"])
def test_repair_removes_the_parent_from_the_child_and_clears_state(mode):
    model, x_ND, v_p, v_c = planted()
    optimizer, tracker = trained_state(model, x_ND)
    enc_norms = model.W_enc.data.norm(dim=0).clone()
    result = repair_absorption(model, optimizer, tracker, x_ND, model.b_dec.data, step=3, z=0.0, max_frac=0.5,
                               min_rows=8, mode=mode)
    assert len(result.rows) == 1
    row = result.rows[0]
    assert set(row) == set(REPAIRS.columns) and row["latent"] == 0 and row["child"] == 1 and row["mode"] == mode
    assert row["hole_rows"] == 256 and row["child_share"] == pytest.approx(1.0)
    assert row["cos_before"] == pytest.approx(2 ** -0.5, abs=0.01)
    touched = [0, 1] if mode == "decoder" else [0]
    assert sorted(result.touched_ids.tolist()) == touched
    d = model.W_dec.data
    if mode == "decoder":
        # the child's decoder lost the parent component and points along the child alone
        assert abs(float(d[1] @ v_p)) < 1e-5 and float(d[1] @ v_c) == pytest.approx(1.0, abs=1e-3)
        assert row["cos_after"] == pytest.approx(0.0, abs=1e-5)
    else:
        assert float(d[1] @ v_p) == pytest.approx(2 ** -0.5, abs=0.01)  # the child is left alone
    # encoders re-fit to their decoder directions, norms kept
    for i in touched:
        e = model.W_enc.data[:, i]
        assert float(e.norm()) == pytest.approx(float(enc_norms[i]), rel=1e-5)
        assert float(e / e.norm() @ d[i]) == pytest.approx(1.0, abs=1e-5)
    untouched = [i for i in range(M) if i not in touched]
    for moment in ("exp_avg", "exp_avg_sq"):
        assert bool((optimizer.state[model.W_dec][moment][touched] == 0).all())
        assert bool((optimizer.state[model.W_enc][moment][:, touched] == 0).all())
        assert bool((optimizer.state[model.b_enc][moment][touched] == 0).all())
        assert bool((optimizer.state[model.W_dec][moment][untouched] != 0).all())
    assert bool((tracker.frequency[touched] == 0).all()) and bool((tracker.hole_rate[touched] == 0).all())
    if mode == "decoder":  # after the repair both fire on the child rows: the parent is back
        model.k = 2
        codes_NM = model.encode(x_ND)
        assert float((codes_NM[1::2, 0] > 0).float().mean()) > 0.9


def test_random_control_flags_as_many_parents_and_needs_hole_statistics():
    model, x_ND, _, _ = planted()
    optimizer, tracker = trained_state(model, x_ND)
    result = repair_absorption(model, optimizer, tracker, x_ND, model.b_dec.data, step=3, z=0.0, max_frac=0.5,
                               min_rows=1, mode="decoder", random_generator=torch.Generator().manual_seed(0))
    assert len(result.rows) <= 1
    with pytest.raises(ValueError, match="hole statistics"):
        repair_absorption(model, optimizer, FrequencyConsistencyTracker(M, D), x_ND, model.b_dec.data, step=3,
                          z=0.0, max_frac=0.5, min_rows=1, mode="decoder")


def test_encoder_suppression_flags_a_suppressed_parent():
    model, x_ND, v_p, v_c = planted()
    with torch.no_grad():  # the parent's encoder is turned away from the child's own direction
        model.W_enc[:, 0] = v_p - 0.8 * v_c
    optimizer, tracker = trained_state(model, x_ND)
    result = repair_absorption(model, optimizer, tracker, x_ND, model.b_dec.data, step=3, z=0.0, max_frac=0.5,
                               min_rows=8, mode="decoder", statistic="encoder_suppression")
    assert [(r["latent"], r["child"]) for r in result.rows] == [(0, 1)]
