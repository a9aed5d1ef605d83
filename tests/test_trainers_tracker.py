"""FrequencyConsistencyTracker against a plain per-latent reference implementation of the formulas."""
from __future__ import annotations

import math

import pytest
import torch

from trainers.fc.tracker import FrequencyConsistencyTracker, encoder_suppression

B, M, D, K, STEPS, BETA = 10, 12, 5, 3, 4, 0.9


class ReferenceTracker:
    """The SPEC formulas written out latent by latent and row by row."""

    def __init__(self, mode: str, tau: float):
        self.mode, self.tau = mode, tau
        self.f = [0.0] * M
        self.n = [0.0] * M
        self.s = [[0.0] * D for _ in range(M)]
        self.q = [0.0] * M

    def update(self, x, a, center):
        for i in range(M):
            active = [abs(float(a[b][i])) > self.tau for b in range(B)]
            cnt = sum(active)
            self.f[i] = BETA * self.f[i] + (1 - BETA) * cnt / B
            self.n[i] = BETA * self.n[i] + (1 - BETA) * cnt
            for j in range(D):
                total = 0.0
                for b in range(B):
                    if not active[b]:
                        continue
                    if self.mode == "direction":
                        diff = [float(x[b][t]) - float(center[t]) for t in range(D)]
                        norm = math.sqrt(sum(v * v for v in diff))
                        total += diff[j] / norm
                    else:
                        total += float(x[b][j])
                self.s[i][j] = BETA * self.s[i][j] + (1 - BETA) * total
            if self.mode == "seed":
                sq = sum(sum(float(x[b][t]) ** 2 for t in range(D)) for b in range(B) if abs(float(a[b][i])) > self.tau)
                self.q[i] = BETA * self.q[i] + (1 - BETA) * sq

    def consistency(self):
        out = []
        for i in range(M):
            if self.n[i] == 0:
                out.append(1.0)
                continue
            mean = [v / self.n[i] for v in self.s[i]]
            if self.mode == "direction":
                out.append(sum(v * v for v in mean))
            else:
                var = self.q[i] / self.n[i] - sum(v * v for v in mean)
                out.append(1.0 / (1.0 + var / D))
        return out


def topk_codes(gen):
    pre = torch.randn(B, M, generator=gen)
    vals, idx = pre.relu().topk(K, dim=1)
    vals[0, 0] = 0.0  # a selected-but-zero entry must not count as active
    dense = torch.zeros(B, M).scatter_(1, idx, vals)
    dense[:, M - 1] = 0.0  # one latent never fires: no evidence, c = 1
    keep = idx != M - 1
    return dense, idx, vals * keep


def update_with_random_codes(tracker, gen, codes, x, center, W_dec):
    """One tracker update with random dense ReLU codes or TopK codes; returns the dense codes."""
    if codes == "dense":
        a = torch.randn(B, M, generator=gen).relu() * (torch.rand(B, M, generator=gen) > 0.5)
        tracker.update(x, a, center, W_dec_MD=W_dec)
        return a
    a, idx, vals = topk_codes(gen)
    tracker.update(x, None, center, active_idx_BK=idx, active_val_BK=vals, W_dec_MD=W_dec)
    return a


@pytest.mark.parametrize("mode", ["direction", "seed"])
@pytest.mark.parametrize("codes", ["dense", "sparse"])
def test_tracker_matches_reference_loop(mode, codes):
    gen = torch.Generator().manual_seed(0)
    tau = 0.0 if codes == "sparse" else 0.3
    tracker = FrequencyConsistencyTracker(M, D, beta=BETA, tau_act=tau, mode=mode)
    ref = ReferenceTracker(mode, tau)
    for _ in range(STEPS):
        x = torch.randn(B, D, generator=gen) * 2 + 1
        center = torch.randn(D, generator=gen) * 0.1
        if codes == "dense":
            a = torch.randn(B, M, generator=gen) * (torch.rand(B, M, generator=gen) > 0.5)
            a[:, M - 1] = 0.0
            step = tracker.update(x, a, center)
        else:
            a, idx, vals = topk_codes(gen)
            step = tracker.update(x, None, center, active_idx_BK=idx, active_val_BK=vals)
        ref.update(x.tolist(), a.tolist(), center.tolist())
        assert step.fires_M.tolist() == [(a[:, i].abs() > tau).sum().item() for i in range(M)]
    torch.testing.assert_close(tracker.frequency, torch.tensor(ref.f), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tracker.consistency, torch.tensor(ref.consistency()), atol=1e-5, rtol=1e-4)
    expected_s = torch.tensor(ref.f) * (1 - torch.tensor(ref.consistency()))
    torch.testing.assert_close(tracker.absorption_score, expected_s, atol=1e-6, rtol=1e-4)
    assert tracker.consistency[M - 1] == 1.0 and tracker.absorption_score[M - 1] == 0.0
    c = tracker.consistency
    assert bool(((c >= 0) & (c <= 1)).all())


def test_sparse_and_dense_paths_agree_and_coo_rows_work():
    gen = torch.Generator().manual_seed(3)
    dense_t = FrequencyConsistencyTracker(M, D, beta=BETA)
    sparse_t = FrequencyConsistencyTracker(M, D, beta=BETA)
    for _ in range(3):
        x = torch.randn(B, D, generator=gen)
        a, idx, vals = topk_codes(gen)
        dense_t.update(x, a)
        rows = torch.arange(B).repeat_interleave(K)
        sparse_t.update_sparse(x, rows, idx.reshape(-1), vals.reshape(-1))
    torch.testing.assert_close(dense_t.consistency, sparse_t.consistency)
    torch.testing.assert_close(dense_t.frequency, sparse_t.frequency)


def test_consistency_is_one_for_a_single_direction_and_low_for_random_ones():
    tracker = FrequencyConsistencyTracker(2, 16, beta=0.5)
    gen = torch.Generator().manual_seed(1)
    direction = torch.randn(16, generator=gen)
    for _ in range(5):
        x_BD = torch.cat([direction * (torch.rand(8, 1, generator=gen) + 0.5), torch.randn(8, 16, generator=gen)])
        acts = torch.zeros(16, 2)
        acts[:8, 0] = 1.0
        acts[8:, 1] = 1.0
        tracker.update(x_BD, acts)
    c = tracker.consistency
    assert c[0] > 0.999 and c[1] < 0.5


def test_reset_and_state_roundtrip_and_projection_memory():
    gen = torch.Generator().manual_seed(2)
    tracker = FrequencyConsistencyTracker(M, D, beta=BETA, mode="seed", projection_dim=3)
    x = torch.randn(B, D, generator=gen)
    a, idx, vals = topk_codes(gen)
    tracker.update(x, a)
    clone = FrequencyConsistencyTracker(M, D, beta=BETA, mode="seed", projection_dim=3, projection_seed=9)
    clone.load_state_dict(tracker.state_dict())
    torch.testing.assert_close(clone.consistency, tracker.consistency)
    fired = int(idx[1, 0])
    tracker.reset([fired])
    assert tracker.frequency[fired] == 0 and tracker.consistency[fired] == 1 and tracker.absorption_score[fired] == 0
    assert clone.frequency[fired] > 0
    assert tracker.extra_bytes == 4 * (M + M + M * 3 + M + D * 3)


def reference_holes(batches, beta: float, hole_rows: int):
    """Per-latent loops of the hole statistics (trainers.fc.tracker's docstring)."""
    m = batches[0][1].shape[1]
    fired, proj, present, holes = [0.0] * m, [0.0] * m, [0.0] * m, [0.0] * m
    for x, a, center, W_dec in batches:
        s = min(hole_rows, x.shape[0])
        new = [[0.0] * 4 for _ in range(m)]
        for i in range(m):
            mu = proj[i] / fired[i] if fired[i] > 0 else 0.0
            for b in range(s):
                p = sum((x[b, j] - center[j]).item() * W_dec[i, j].item() for j in range(x.shape[1]))
                active = abs(a[b, i].item()) > 0
                is_present = fired[i] > 0 and p > 0.5 * mu
                new[i][0] += active
                new[i][1] += p if active else 0.0
                new[i][2] += is_present
                new[i][3] += is_present and not active
        for i in range(m):
            fired[i] = beta * fired[i] + (1 - beta) * new[i][0]
            proj[i] = beta * proj[i] + (1 - beta) * new[i][1]
            present[i] = beta * present[i] + (1 - beta) * new[i][2]
            holes[i] = beta * holes[i] + (1 - beta) * new[i][3]
    return [h / p if p > 0 else 0.0 for h, p in zip(holes, present)]


@pytest.mark.parametrize("codes", ["dense", "sparse"])
def test_hole_rate_matches_reference_loop(codes):
    gen = torch.Generator().manual_seed(7)
    hole_rows = 5
    tracker = FrequencyConsistencyTracker(M, D, beta=BETA, hole_rows=hole_rows)
    batches = []
    for _ in range(STEPS):
        x = torch.randn(B, D, generator=gen) * 2 + 1
        center = torch.randn(D, generator=gen) * 0.1
        W_dec = torch.randn(M, D, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        a = update_with_random_codes(tracker, gen, codes, x, center, W_dec)
        batches.append((x, a, center, W_dec))
    expected = torch.tensor(reference_holes(batches, BETA, hole_rows))
    torch.testing.assert_close(tracker.hole_rate, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tracker.hole_score, tracker.frequency * expected, atol=1e-5, rtol=1e-4)
    assert float(tracker.hole_rate.max()) > 0  # the sample exercises holes
    tracker.reset([0, 1])
    assert tracker.hole_rate[:2].tolist() == [0.0, 0.0]


def test_encoder_suppression_matches_reference_loop():
    gen = torch.Generator().manual_seed(9)
    W_dec = torch.randn(M, D, generator=gen)
    W_enc = torch.randn(D, M, generator=gen)
    d = W_dec / W_dec.norm(dim=1, keepdim=True)
    e = (W_enc / W_enc.norm(dim=0, keepdim=True)).T
    expected = []
    for p in range(M):
        best = 0.0
        for c in range(M):
            if c == p:
                continue
            g = float(d[p] @ d[c])
            supp = (float(e[p] @ d[c]) - g * float(e[p] @ d[p])) / max(1 - g * g, 1e-6) ** 0.5
            best = max(best, max(g, 0.0) * max(-supp, 0.0))
        expected.append(best)
    torch.testing.assert_close(encoder_suppression(W_enc, W_dec, chunk=3), torch.tensor(expected), atol=1e-5, rtol=1e-4)


def test_a_suppressed_parent_encoder_scores_high():
    """A parent whose encoder points away from its child's own direction is what the statistic finds."""
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(2)))
    parent, child_part = basis[:, 0], basis[:, 1]
    W_dec = torch.randn(M, D, generator=torch.Generator().manual_seed(3))
    W_dec[0], W_dec[1] = parent, (parent + child_part) / 2 ** 0.5
    W_enc = W_dec.T.clone()
    scores = encoder_suppression(W_enc, W_dec)
    W_enc[:, 0] = parent - 0.8 * child_part  # the parent's encoder is turned away from the child
    suppressed = encoder_suppression(W_enc, W_dec)
    assert float(suppressed[0]) > 0.3 and float(suppressed[0]) > float(scores[0]) + 0.3


@pytest.mark.parametrize("codes", ["dense", "topk"])
def test_exclusion_matches_reference_loop(codes):
    """Top-r decoder neighbours by cosine, pair co-firing EMAs on the sampled rows, and
    max_j cos+ (1 - C_ij / (f_i f_j))+, against plain per-latent loops."""
    gen = torch.Generator().manual_seed(11)
    hole_rows, r = 6, 3
    tracker = FrequencyConsistencyTracker(M, D, beta=BETA, hole_rows=hole_rows, neighbours=r)
    W_dec = torch.randn(M, D, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    tracker.refresh_neighbours(W_dec, chunk=5)  # chunks smaller than M exercise the chunking
    freq = [0.0] * M
    cofire = {}
    cos = (W_dec @ W_dec.T).tolist()
    nbrs = [sorted((j for j in range(M) if j != i), key=lambda j: -cos[i][j])[:r] for i in range(M)]
    assert [sorted(n) for n in tracker.neighbours_MR.tolist()] == [sorted(n) for n in nbrs]
    for _ in range(STEPS):
        x = torch.randn(B, D, generator=gen)
        a = update_with_random_codes(tracker, gen, codes, x, None, W_dec)
        fires = (a.abs() > 0).tolist()
        for i in range(M):
            freq[i] = BETA * freq[i] + (1 - BETA) * sum(row[i] for row in fires) / B
            for j in nbrs[i]:
                both = sum(row[i] and row[j] for row in fires[:hole_rows]) / hole_rows
                cofire[i, j] = BETA * cofire.get((i, j), 0.0) + (1 - BETA) * both
    expected = []
    for i in range(M):
        best = 0.0
        for j in nbrs[i]:
            ratio = cofire[i, j] / (freq[i] * freq[j]) if freq[i] * freq[j] > 0 else 1.0
            best = max(best, max(cos[i][j], 0.0) * max(1.0 - ratio, 0.0))
        expected.append(best)
    torch.testing.assert_close(tracker.exclusion, torch.tensor(expected), atol=1e-5, rtol=1e-4)
    assert float(tracker.exclusion.max()) > 0
    assert "exclusion" in tracker.statistics()
    # state round trip; surgery forgets the latent's pairs and the pairs that point at it
    clone = FrequencyConsistencyTracker(M, D, beta=BETA, hole_rows=hole_rows, neighbours=r)
    clone.load_state_dict(tracker.state_dict())
    torch.testing.assert_close(clone.exclusion, tracker.exclusion)
    target = int(tracker.neighbours_MR[0, 0])
    tracker.reset([target])
    assert float(tracker._cofire_MR[target].abs().sum()) == 0.0
    assert float(tracker._cofire_MR[tracker.neighbours_MR == target].abs().sum()) == 0.0
    # a refresh with the same decoder keeps every pair's co-firing EMA
    before = clone._cofire_MR.clone()
    clone.refresh_neighbours(W_dec)
    torch.testing.assert_close(clone._cofire_MR.sum(1), before.sum(1))


def test_exclusion_flags_a_pair_that_never_fires_together():
    m, d = 4, 3
    tracker = FrequencyConsistencyTracker(m, d, beta=0.0, hole_rows=4, neighbours=1)
    W_dec = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [0, 0, 1.0], [0, 0.6, -0.8]])
    tracker.refresh_neighbours(W_dec)
    a = torch.tensor([[1.0, 0, 1, 1], [0, 1, 1, 1], [1, 0, 1, 1], [0, 1, 1, 1]])  # 0 and 1 exclude each other
    tracker.update(torch.randn(4, d), a, None, W_dec_MD=W_dec)
    ex = tracker.exclusion
    assert ex[0] == pytest.approx(0.8) and ex[1] == pytest.approx(0.8)
    assert ex[2] == 0.0 and ex[3] == 0.0  # 2 and 3 always fire together: R = 1


def test_training_with_neighbours_records_exclusion_in_the_history(tmp_path):
    import dataclasses

    import pandas as pd

    from pipeline.config import get_preset
    from trainers.training.config import TrackerConfig
    from trainers.training.data import InMemoryActivations
    from trainers.training.export import ModelInfo
    from trainers.training.loop import train_sae

    cfg = get_preset("tiny").train
    cfg = dataclasses.replace(cfg, n_tokens=4096, tracker=TrackerConfig(beta=0.9, hole_rows=64, neighbours=4,
                                                                         neighbour_every=4))
    source = InMemoryActivations(torch.randn(2048, 16, generator=torch.Generator().manual_seed(0)))
    train_sae(source, cfg, "topk", 0, tmp_path / "sae", ModelInfo("synthetic"), progress=False)
    hist = pd.read_parquet(tmp_path / "sae" / "fc_history.parquet")
    last = hist[hist["step"] == hist["step"].max()]
    assert "exclusion" in hist and last["exclusion"].notna().all() and (last["exclusion"] >= 0).all()
