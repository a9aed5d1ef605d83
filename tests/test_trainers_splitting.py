"""FC-guided splitting and dead-latent resampling: the latent surgery and its bookkeeping."""
from __future__ import annotations

import torch

from trainers.fc.splitting import (SPLITS, fc_split, reservoir_row_counts, select_candidates,
                                   select_random_candidates, select_slots)
from trainers.fc.tracker import FrequencyConsistencyTracker
from trainers.saes.relu_l1 import ReluL1SAE
from trainers.saes.topk import TopKSAE
from trainers.training.resampling import resample_dead

D, M = 16, 8


def planted_inputs(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    basis_DD, _ = torch.linalg.qr(torch.randn(D, D, generator=gen))
    d1, d2 = basis_DD[:, 0], basis_DD[:, 1]
    which_N1 = (torch.arange(n) % 2 == 0).float()[:, None]
    scale_N1 = 1 + 0.2 * torch.rand(n, 1, generator=gen)
    x_ND = scale_N1 * (which_N1 * d1 + (1 - which_N1) * d2) + 0.03 * torch.randn(n, D, generator=gen)
    return x_ND, d1, d2




def test_planted_two_direction_latent_is_split_and_moments_cleared():
    gen = torch.Generator().manual_seed(0)
    x_ND, d1, d2 = planted_inputs(torch.Generator().manual_seed(5), 512)
    model = TopKSAE(D, M, k=1, generator=gen)
    with torch.no_grad():
        model.b_dec.zero_()
        model.b_enc.fill_(-0.5)
        model.b_enc[0] = 0.1
        mixed = (d1 + d2) / (d1 + d2).norm()
        model.W_dec[0] = mixed
        model.W_enc[:, 0] = mixed * 2
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    enc_norm_before = float(model.W_enc.data[:, 0].norm())
    out = model.training_step(x_ND, torch.zeros(M, dtype=torch.bool))
    out.loss.backward()
    optimizer.step()
    assert bool((model.encode(x_ND)[:, 0] > 0).all()), "latent 0 must fire on both planted directions"
    for state in optimizer.state.values():  # as after a long run: every moment non-zero
        state["exp_avg"].fill_(0.5)
        state["exp_avg_sq"].fill_(0.25)

    tracker = FrequencyConsistencyTracker(M, D, beta=0.9)
    for x_BD in x_ND.split(64):
        tracker.update(x_BD, model.encode(x_BD), model.b_dec.data)
    assert int(tracker.absorption_score.argmax()) == 0

    bias_before = float(model.b_enc.data[0])
    enc_before = model.W_enc.data[:, 0].clone()
    result = fc_split(model, optimizer, tracker, x_ND, model.b_dec.data, step=7, z=1.0,
                      max_split_frac=1 / M, dead_freq=1e-5, min_rows=8)
    assert len(result.rows) == 1
    row = result.rows[0]
    assert set(row) == set(SPLITS.columns) and row["step"] == 7 and row["latent"] == 0 and row["slot"] != 0
    slot = row["slot"]
    new_dirs = model.W_dec.data[[0, slot]]
    cos = (new_dirs @ torch.stack([d1, d2]).T).abs()
    assert max(min(cos[0, 0], cos[1, 1]), min(cos[0, 1], cos[1, 0])) > 0.9, cos
    assert abs(row["cosine"]) < 0.2
    # the halves share the parent's encoder: together they give its pre-activation
    torch.testing.assert_close(model.W_enc.data[:, 0] + model.W_enc.data[:, slot], enc_before)
    assert float(model.b_enc.data[0]) == float(model.b_enc.data[slot]) == 0.5 * bias_before
    assert float(model.W_enc.data[:, slot].norm()) < enc_norm_before
    assert row["slot_dead"] and row["slot_frequency"] < 1e-5

    touched = [0, slot]
    untouched = [i for i in range(M) if i not in touched]
    for moment in ("exp_avg", "exp_avg_sq"):
        assert bool((optimizer.state[model.W_dec][moment][touched] == 0).all())
        assert bool((optimizer.state[model.W_enc][moment][:, touched] == 0).all())
        assert bool((optimizer.state[model.b_enc][moment][touched] == 0).all())
        assert bool((optimizer.state[model.W_dec][moment][untouched] != 0).all())
        assert bool((optimizer.state[model.W_enc][moment][:, untouched] != 0).all())
        assert bool((optimizer.state[model.b_dec][moment] != 0).all())
    assert bool((tracker.frequency[touched] == 0).all()) and bool((tracker.consistency[touched] == 1).all())
    # after the split each half fires on one direction only
    codes_N = model.encode(x_ND).argmax(1)
    assert set(codes_N[::2].tolist()) != set(codes_N[1::2].tolist())


def test_split_halves_stay_selective_when_every_input_shares_a_large_component():
    # Residual streams are anisotropic: every token carries a large shared component. A half whose
    # encoder followed its pattern's mean input would fire on every token; the halves must not fire
    # on tokens their parent ignored, and must stay sharper than the parent on their own pattern.
    gen = torch.Generator().manual_seed(3)
    basis_DD, _ = torch.linalg.qr(torch.randn(D, D, generator=gen))
    d1, d2, shared = basis_DD[:, 0], basis_DD[:, 1], basis_DD[:, 2]
    n = 512
    which_N1 = (torch.arange(n) % 2 == 0).float()[:, None]
    planted_ND = (1 + 0.2 * torch.rand(n, 1, generator=gen)) * (which_N1 * d1 + (1 - which_N1) * d2)
    others_ND = torch.randn(n, D - 3, generator=gen) @ basis_DD[:, 3:].T
    x_ND = torch.cat([planted_ND, others_ND]) + 8 * shared + 0.03 * torch.randn(2 * n, D, generator=gen)
    model = TopKSAE(D, M, k=1, generator=gen)
    with torch.no_grad():
        model.b_dec.zero_()
        model.b_enc.fill_(-100.0)  # only latent 0 is alive
        mixed = (d1 + d2) / (d1 + d2).norm()
        model.W_dec[0] = mixed
        model.W_enc[:, 0] = mixed * 2
        model.b_enc[0] = -0.5
    parent_pre_N = model.pre_acts(x_ND)[:, 0]
    assert bool((parent_pre_N[:n] > 0).all()) and float((parent_pre_N[n:] > 0).float().mean()) < 0.05
    tracker = FrequencyConsistencyTracker(M, D, beta=0.9)
    for x_BD in x_ND.split(64):
        tracker.update(x_BD, model.encode(x_BD), model.b_dec.data)
    tracker.reset([6, 7])
    protected = torch.ones(M, dtype=torch.bool)
    protected[[0, 6, 7]] = False  # latent 0 is the only candidate, 6 and 7 the only slots
    result = fc_split(model, torch.optim.Adam(model.parameters()), tracker, x_ND, model.b_dec.data, step=1,
                      z=0.5, max_split_frac=1 / M, dead_freq=1e-5, min_rows=8, protected_M=protected)
    assert [row["latent"] for row in result.rows] == [0]
    pre_N2 = model.pre_acts(x_ND)[:, [0, result.rows[0]["slot"]]]
    outside = float((pre_N2[n:] > 0).float().mean())
    assert outside <= float((parent_pre_N[n:] > 0).float().mean()) + 0.01, outside
    own_N = pre_N2[:n].argmax(1)
    assert set(own_N[::2].tolist()) != set(own_N[1::2].tolist()), "each half leads on one planted direction"


def test_candidates_and_slots_order():
    score = torch.tensor([0.0, 0.9, 0.1, 0.8, 0.0, 0.0, 0.05, 0.0])
    assert select_candidates(score, z=1.0, max_count=5).tolist() == [1, 3]
    assert select_candidates(score, z=1.0, max_count=1).tolist() == [1]
    assert select_candidates(torch.zeros(8), z=1.0, max_count=3).numel() == 0
    freq = torch.tensor([0.5, 0.0, 0.2, 0.0, 0.1, 0.3, 0.0, 0.4])
    assert select_slots(freq, 3, torch.tensor([1])).tolist() == [3, 6, 4]


def test_resampling_reinitialises_only_dead_latents():
    gen = torch.Generator().manual_seed(1)
    model = ReluL1SAE(D, M, l1_coeff=1.0, generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_ND = torch.randn(256, D, generator=gen)
    model.training_step(x_ND, torch.zeros(M, dtype=torch.bool)).loss.backward()
    optimizer.step()
    before = model.W_dec.data.clone()
    dead = torch.zeros(M, dtype=torch.bool)
    dead[[2, 5]] = True
    ids = resample_dead(model, optimizer, None, x_ND, dead, torch.Generator().manual_seed(0))
    assert ids.tolist() == [2, 5]
    assert not torch.allclose(model.W_dec.data[[2, 5]], before[[2, 5]])
    torch.testing.assert_close(model.W_dec.data[~dead], before[~dead])
    torch.testing.assert_close(model.W_dec.data[[2, 5]].norm(dim=1), torch.ones(2))
    assert bool((optimizer.state[model.W_enc]["exp_avg"][:, [2, 5]] == 0).all())
    assert bool((model.b_enc.data[[2, 5]] == 0).all())


def test_recently_split_latents_are_neither_candidates_nor_slots():
    gen = torch.Generator().manual_seed(4)
    model = TopKSAE(D, M, k=2, generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tracker = FrequencyConsistencyTracker(M, D, beta=0.5)
    x_ND = torch.randn(1024, D, generator=gen)
    for x_BD in x_ND.split(128):
        tracker.update(x_BD, model.encode(x_BD))
    tracker.reset([6, 7])  # two dead latents: the only possible slots
    protected = torch.zeros(M, dtype=torch.bool)
    protected[int(tracker.absorption_score.argmax())] = True
    protected[int(tracker.frequency.argmin())] = True
    result = fc_split(model, optimizer, tracker, x_ND, model.b_dec.data, step=1, z=0.0, max_split_frac=0.5,
                      dead_freq=1e-5, min_rows=4, protected_M=protected)
    assert result.rows, "unprotected candidates remain"
    assert not set(result.touched_ids.tolist()) & set(torch.nonzero(protected).squeeze(1).tolist())
    assert {row["slot"] for row in result.rows} <= {6, 7} and all(row["slot_dead"] for row in result.rows)


def test_without_dead_latents_nothing_is_overwritten():
    gen = torch.Generator().manual_seed(4)
    model = TopKSAE(D, M, k=4, generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tracker = FrequencyConsistencyTracker(M, D, beta=0.5)
    x_ND = torch.randn(1024, D, generator=gen)
    for x_BD in x_ND.split(128):
        tracker.update(x_BD, model.encode(x_BD))
    assert bool((tracker.frequency > 1e-5).all())
    before = model.W_dec.data.clone()
    result = fc_split(model, optimizer, tracker, x_ND, model.b_dec.data, step=1, z=0.0, max_split_frac=0.5,
                      dead_freq=1e-5, min_rows=4)
    assert result.rows == [] and torch.equal(model.W_dec.data, before)


def test_threshold_ignores_protected_latents_and_random_control_matches_the_count():
    score = torch.tensor([0.0, 0.9, 0.1, 0.8, 0.0, 0.0, 0.05, 0.0, 5.0])
    eligible = torch.ones(9, dtype=torch.bool)
    eligible[8] = False  # a protected outlier must not lift the threshold over everyone else
    assert select_candidates(score, z=1.0, max_count=5, eligible_M=eligible).tolist() == [1, 3]
    assert select_candidates(score, z=1.0, max_count=5).tolist() == [8]
    picks = [select_random_candidates(score, 1.0, 5, eligible, torch.Generator().manual_seed(s)).tolist()
             for s in range(20)]
    assert all(len(p) == 2 and 8 not in p for p in picks) and len({tuple(sorted(p)) for p in picks}) > 3


def _tracked_model(k: int, slots: list[int]) -> tuple[TopKSAE, FrequencyConsistencyTracker, torch.Tensor]:
    """A random TopK SAE, its tracker after 1024 random inputs, and the inputs; ``slots`` reset (dead)."""
    gen = torch.Generator().manual_seed(4)
    model = TopKSAE(D, M, k=k, generator=gen)
    tracker = FrequencyConsistencyTracker(M, D, beta=0.5)
    x_ND = torch.randn(1024, D, generator=gen)
    for x_BD in x_ND.split(128):
        tracker.update(x_BD, model.encode(x_BD))
    tracker.reset(slots)
    return model, tracker, x_ND


def _copy(model: TopKSAE, tracker: FrequencyConsistencyTracker) -> tuple[TopKSAE, FrequencyConsistencyTracker]:
    trial = TopKSAE(D, M, k=model.k, generator=torch.Generator().manual_seed(4))
    trial.load_state_dict(model.state_dict())
    t = FrequencyConsistencyTracker(M, D, beta=0.5)
    t.load_state_dict(tracker.state_dict())
    return trial, t


def test_latents_above_max_freq_are_never_split_by_the_score_or_the_control():
    model, tracker, x_ND = _tracked_model(k=2, slots=[6, 7])
    freq = tracker.frequency
    dense = torch.nonzero(freq > 0.25).squeeze(1).tolist()
    assert dense and int(tracker.absorption_score.argmax()) in dense, "the score's favourite must be a dense latent"
    for control in (None, torch.Generator().manual_seed(1)):
        trial, t = _copy(model, tracker)
        unguarded = fc_split(trial, torch.optim.Adam(trial.parameters()), t, x_ND, trial.b_dec.data, step=1, z=0.0,
                             max_split_frac=0.5, dead_freq=1e-5, min_rows=4, random_generator=control)
        trial, t = _copy(model, tracker)
        guarded = fc_split(trial, torch.optim.Adam(trial.parameters()), t, x_ND, trial.b_dec.data, step=1, z=0.0,
                           max_split_frac=0.5, dead_freq=1e-5, min_rows=4, random_generator=control, max_freq=0.25)
        assert guarded.rows, "sparser candidates remain"
        assert all(row["frequency"] <= 0.25 for row in guarded.rows)
        if control is None:
            assert {row["latent"] for row in unguarded.rows} & set(dense), "without the guard a dense latent splits"


def test_random_control_draws_only_latents_with_enough_rows_to_split():
    """Most living latents have fewer than min_rows rows in a short reservoir; the control draws among
    the others, so it fills every slot instead of losing picks the surgery cannot cluster."""
    model, tracker, x_ND = _tracked_model(k=1, slots=[6, 7])
    reservoir_RD, min_rows = x_ND[:48], 8
    counts_M = reservoir_row_counts(model, reservoir_RD, tracker.tau_act)
    assert counts_M.tolist() == [int((model.encode(reservoir_RD)[:, i] > 0).sum()) for i in range(M)]
    living = torch.nonzero(tracker.frequency > 1e-5).squeeze(1).tolist()
    splittable = {i for i in living if counts_M[i] >= min_rows}
    assert 2 <= len(splittable) < len(living) - 2, "the setting needs rare living latents"
    for seed in range(8):
        trial, t = _copy(model, tracker)
        result = fc_split(trial, torch.optim.Adam(trial.parameters()), t, reservoir_RD, trial.b_dec.data, step=1,
                          z=0.0, max_split_frac=0.5, dead_freq=1e-5, min_rows=min_rows,
                          random_generator=torch.Generator().manual_seed(seed))
        assert len(result.rows) == 2 and {row["latent"] for row in result.rows} <= splittable


def _reference_two_direction_patterns(u_ND: torch.Tensor, iters: int = 10):
    """The clustering of one candidate's rows, written plainly (as the split used it before the
    batched version): centroids and labels, or None when one side empties."""
    centred_ND = u_ND - u_ND.mean(0)
    v_D = torch.randn(u_ND.shape[1], generator=torch.Generator().manual_seed(0))
    for _ in range(30):  # power iteration for the first principal direction
        v_D = centred_ND.T @ (centred_ND @ v_D)
        v_D = v_D / v_D.norm().clamp_min(1e-30)
    labels_N = (centred_ND @ v_D) > 0
    for _ in range(iters):
        if labels_N.all() or not labels_N.any():
            return None
        c1_D, c2_D = u_ND[labels_N].mean(0), u_ND[~labels_N].mean(0)
        c1_D, c2_D = c1_D / c1_D.norm().clamp_min(1e-12), c2_D / c2_D.norm().clamp_min(1e-12)
        new_labels_N = (u_ND @ c1_D) >= (u_ND @ c2_D)
        if torch.equal(new_labels_N, labels_N):
            break
        labels_N = new_labels_N
    if labels_N.all() or not labels_N.any():
        return None
    return c1_D, c2_D, labels_N


def test_batched_two_direction_patterns_match_the_per_group_version():
    from trainers.fc.splitting import two_direction_patterns

    gen = torch.Generator().manual_seed(11)
    groups, parts = [], []
    for g, n in enumerate([3, 40, 17, 64, 9, 1, 30]):
        if g % 2:  # two planted directions
            x, _, _ = planted_inputs(gen, n)
        else:  # one direction plus noise, or a single row
            x = torch.randn(1, D, generator=gen) + 0.05 * torch.randn(n, D, generator=gen)
        parts.append(x / x.norm(dim=1, keepdim=True))
        groups.append(torch.full((n,), g))
    u_ND, group_N = torch.cat(parts), torch.cat(groups)
    c1, c2, ok = two_direction_patterns(u_ND, group_N, len(parts))
    for g, u in enumerate(parts):
        found = _reference_two_direction_patterns(u)
        assert bool(ok[g]) == (found is not None), g
        if found is not None:
            assert torch.allclose(c1[g], found[0], atol=1e-5) and torch.allclose(c2[g], found[1], atol=1e-5)
    assert bool(ok[1]) and bool(ok[3]) and not bool(ok[5])
