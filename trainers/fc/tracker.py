"""FrequencyConsistencyTracker: per-latent firing frequency and input consistency, as EMAs.

Per step, with SAE inputs x (B x D) and codes a (B x M), active mask A = |a| > tau_act:

    f   <- beta f   + (1 - beta) mean_b A[b, :]
    N_i <- beta N_i + (1 - beta) sum_b A[b, i]
    S_i <- beta S_i + (1 - beta) sum_b A[b, i] v_b

``direction`` mode: v_b = (x_b - center) / ||x_b - center|| and c_i = ||S_i / N_i||^2 (mean
resultant length squared; 1 - c_i is the total variance of the unit directions).
``seed`` mode: v_b = x_b, plus Q_i <- beta Q_i + (1 - beta) sum_b A[b, i] ||x_b||^2, and
c_i = 1 / (1 + (Q_i / N_i - ||S_i / N_i||^2) / D).
Latents with N_i = 0 have no evidence: c_i = 1. Absorption score s_i = f_i (1 - c_i).

The update of S is A^T V: a sparse-dense product for TopK codes (O(B k P)), a matmul for dense
codes; a B x M x D tensor is never formed. Extra memory is O(M P), P = D or projection_dim.

Hole rate along the own decoder (statistics that can see absorption: a parent whose direction is
present in the input while a child latent fires in its place). On the first ``hole_rows`` rows of
each batch (batches are random permutations, so a random sample), with centred inputs x and unit
decoder rows d_i: p_bi = x_b . d_i; mu_i = EMA of p_bi over those rows where i fires;
present_bi = p_bi > 0.5 mu_i; H_i <- beta H_i + (1 - beta) sum_b present_bi and not A_bi;
P_i <- beta P_i + (1 - beta) sum_b present_bi; ``hole_rate`` = H_i / P_i (0 without evidence) and
``hole_score`` = f_i * hole_rate. Cost: one (hole_rows x M x D) matmul per step, 4 M floats.

Exclusion among decoder neighbours (``neighbours`` = r > 0): each latent keeps its top-r decoder
neighbours by cosine (refreshed by :meth:`refresh_neighbours`, O(M^2 D) in chunks, every few hundred
steps) and an EMA C_ij of how often i and j fire together on the sampled rows; with R_ij = C_ij /
(f_i f_j) (1 for independent latents, 0 for mutually exclusive ones), ``exclusion`` =
max_j cos+(d_i, d_j) (1 - R_ij)+. Cost per step: r lookups per active entry of the hole_rows sample; 3 M r numbers.

:func:`encoder_suppression` (weights only, computed at snapshots): with unit decoder rows D and unit
encoder columns E, G = D D^T, H = E D^T, supp_pc = (H_pc - G_pc H_pp) / sqrt(1 - G_pc^2) (p's
encoder along the part of d_c orthogonal to d_p) and g_p = max_c G+_pc (-supp_pc)+: how strongly a
latent's encoder is turned away from a close neighbour's own direction (a parent that learned to be
silent when its child fires). O(M^2 D) in row chunks, never M x M at once.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from trainers.saes.sae import latent_major_csr
from trainers.training.recipe import MaintenanceContext


def memory_steps(beta: float) -> int:
    """Steps an EMA of decay ``beta`` needs to reflect its inputs (1 / (1 - beta))."""
    return int(round(1.0 / (1.0 - beta))) if beta > 0 else 1


def tracker_warm(ctx: MaintenanceContext) -> bool:
    """Whether the tracker's EMAs have seen 1 / (1 - beta) steps: hooks driven by its statistics act
    only then."""
    return ctx.step >= memory_steps(ctx.cfg.tracker.beta)


class TrackerStep(NamedTuple):
    fires_M: torch.Tensor
    """How many rows of the batch activated each latent (the same indicators as L0)."""
    l0: float
    """Mean active latents per row."""


class FrequencyConsistencyTracker:
    def __init__(self, d_sae: int, d_in: int, beta: float = 0.99, tau_act: float = 0.0,
                 mode: str = "direction", projection_dim: int | None = None,
                 device: str | torch.device = "cpu", projection_seed: int = 0, hole_rows: int = 0,
                 neighbours: int = 0):
        if mode not in ("direction", "seed"):
            raise ValueError(f"tracker mode must be direction or seed, got {mode!r}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"tracker beta must be in [0, 1), got {beta}")
        self.d_sae, self.d_in, self.beta, self.tau_act, self.mode = d_sae, d_in, beta, tau_act, mode
        self.projection_DP: torch.Tensor | None = None
        if projection_dim is not None:
            gen = torch.Generator().manual_seed(projection_seed)
            # Gaussian with variance 1/P keeps squared norms unbiased (Johnson-Lindenstrauss).
            self.projection_DP = (torch.randn(d_in, projection_dim, generator=gen) / projection_dim ** 0.5).to(device)
        p = projection_dim or d_in
        self._freq_M = torch.zeros(d_sae, device=device)
        self._count_M = torch.zeros(d_sae, device=device)
        self._sum_MP = torch.zeros(d_sae, p, device=device)
        self._sq_M = torch.zeros(d_sae, device=device) if mode == "seed" else None
        self.hole_rows = hole_rows
        # hole statistics: firing count and projection sum on the sampled rows, present and hole counts
        self._hole_MK = torch.zeros(d_sae, 4, device=device) if hole_rows else None
        if neighbours and not hole_rows:
            raise ValueError("the exclusion statistic counts co-firing on the hole_rows sample: set hole_rows > 0")
        self.neighbours = min(neighbours, d_sae - 1)
        # exclusion among decoder neighbours: top-r neighbour ids and cosines (set by refresh_neighbours)
        # and the EMA of each pair's co-firing rate on the sampled rows
        self.neighbours_MR: torch.Tensor | None = None
        self._nbr_cos_MR: torch.Tensor | None = None
        self._cofire_MR = torch.zeros(d_sae, self.neighbours, device=device) if self.neighbours else None

    # ---- statistics ---------------------------------------------------------------------
    @property
    def frequency(self) -> torch.Tensor:
        return self._freq_M.clone()

    @property
    def consistency(self) -> torch.Tensor:
        has_evidence_M = self._count_M > 0
        n_M = self._count_M.clamp_min(torch.finfo(self._count_M.dtype).tiny)
        mean_MP = self._sum_MP / n_M[:, None]
        if self.mode == "direction":
            c_M = mean_MP.pow(2).sum(1).clamp(0.0, 1.0)
        else:
            var_total_M = (self._sq_M / n_M - mean_MP.pow(2).sum(1)).clamp_min(0.0)
            c_M = 1.0 / (1.0 + var_total_M / self.d_in)
        return torch.where(has_evidence_M, c_M, torch.ones_like(c_M))

    @property
    def absorption_score(self) -> torch.Tensor:
        return self._freq_M * (1.0 - self.consistency)

    @property
    def hole_rate(self) -> torch.Tensor | None:
        if self._hole_MK is None:
            return None
        present_M, holes_M = self._hole_MK[:, 2], self._hole_MK[:, 3]
        return torch.where(present_M > 0, holes_M / present_M.clamp_min(torch.finfo(present_M.dtype).tiny),
                           torch.zeros_like(present_M))

    @property
    def hole_fired(self) -> torch.Tensor | None:
        """EMA count of sampled rows on which each latent fired (the evidence behind its mean projection)."""
        return None if self._hole_MK is None else self._hole_MK[:, 0].clone()

    @property
    def hole_mean_projection(self) -> torch.Tensor | None:
        """mu_i: the mean projection on latent i's decoder over the sampled rows where i fires (0 without
        evidence)."""
        if self._hole_MK is None:
            return None
        fired_M, proj_sum_M = self._hole_MK[:, 0], self._hole_MK[:, 1]
        return torch.where(fired_M > 0, proj_sum_M / fired_M.clamp_min(torch.finfo(fired_M.dtype).tiny),
                           torch.zeros_like(fired_M))

    @property
    def hole_score(self) -> torch.Tensor | None:
        rate_M = self.hole_rate
        return None if rate_M is None else self._freq_M * rate_M

    @property
    def exclusion(self) -> torch.Tensor | None:
        """max_j cos+(d_i, d_j) (1 - C_ij / (f_i f_j))+ over the top-r decoder neighbours j: high when a
        close neighbour fires much less often together with i than chance (a parent and the child that
        absorbed it, or siblings). 0 without co-firing evidence; None when not kept."""
        if self.neighbours_MR is None:
            return None if self._cofire_MR is None else torch.zeros_like(self._freq_M)
        f_M = self._freq_M
        expected_MR = f_M[:, None] * f_M[self.neighbours_MR]
        ratio_MR = torch.where(expected_MR > 0, self._cofire_MR / expected_MR.clamp_min(torch.finfo(f_M.dtype).tiny),
                               torch.ones_like(expected_MR))
        return (self._nbr_cos_MR * (1.0 - ratio_MR).clamp_min(0.0)).max(1).values

    def statistics(self) -> dict[str, torch.Tensor]:
        """Every per-latent statistic the tracker keeps (the columns of fc_history.parquet)."""
        out = {"frequency": self.frequency, "consistency": self.consistency, "absorption_score": self.absorption_score}
        if self._hole_MK is not None:
            out["hole_rate"], out["hole_score"] = self.hole_rate, self.hole_score
        if self._cofire_MR is not None:
            out["exclusion"] = self.exclusion
        return out

    @torch.no_grad()
    def refresh_neighbours(self, W_dec_MD: torch.Tensor, chunk: int = 1024) -> None:
        """Recompute each latent's top-r decoder neighbours by cosine (O(M^2 D) in row chunks); a pair
        that stays keeps its co-firing EMA, a new pair starts from 0."""
        if self._cofire_MR is None:
            return
        D_MD = W_dec_MD.detach().float()
        D_MD = D_MD / D_MD.norm(dim=1, keepdim=True).clamp_min(1e-12)
        m, r = D_MD.shape[0], self.neighbours
        ids_MR = torch.empty(m, r, dtype=torch.long, device=D_MD.device)
        cos_MR = torch.empty(m, r, device=D_MD.device)
        for start in range(0, m, chunk):
            rows = slice(start, min(start + chunk, m))
            G_CM = D_MD[rows] @ D_MD.T
            G_CM[torch.arange(G_CM.shape[0]), torch.arange(rows.start, rows.stop)] = -float("inf")  # not itself
            top = G_CM.topk(r, dim=1)
            ids_MR[rows], cos_MR[rows] = top.indices, top.values
        if self.neighbours_MR is not None:
            same_MRR = ids_MR[:, :, None] == self.neighbours_MR[:, None, :]
            self._cofire_MR = (same_MRR * self._cofire_MR[:, None, :]).sum(-1)
        self.neighbours_MR, self._nbr_cos_MR = ids_MR, cos_MR.clamp_min(0.0)

    def _fold_cofiring(self, s: int, rows_N: torch.Tensor, latents_N: torch.Tensor) -> None:
        """Co-firing rate of each (latent, neighbour) pair on the s sampled rows, folded into the EMA."""
        if self.neighbours_MR is None or s == 0:
            return
        A_MS = torch.zeros(self.d_sae, s, dtype=torch.bool, device=self._freq_M.device)
        A_MS[latents_N, rows_N] = True
        # Co-firing only happens where the latent fires: look its neighbours up at its own active
        # entries (N x R lookups, N = nnz of the sample) rather than and-ing dense (M, R, S) masks.
        # Entries are unique (a latent fires at most once per row), so the counts are exact.
        both_NR = A_MS[self.neighbours_MR[latents_N], rows_N[:, None]]
        count_MR = torch.zeros_like(self._cofire_MR).index_add_(0, latents_N, both_NR.to(self._cofire_MR.dtype))
        self._cofire_MR.mul_(self.beta).add_(count_MR, alpha=(1.0 - self.beta) / s)

    @property
    def extra_bytes(self) -> int:
        tensors = [self._freq_M, self._count_M, self._sum_MP, self._sq_M, self.projection_DP, self._hole_MK,
                   self.neighbours_MR, self._nbr_cos_MR, self._cofire_MR]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def _input_vectors(self, x_BD: torch.Tensor, center_D: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.mode == "direction":
            centred_BD = x_BD if center_D is None else x_BD - center_D.detach().float()
            norm_B1 = centred_BD.norm(dim=1, keepdim=True)
            v_BP = torch.where(norm_B1 > 0, centred_BD / norm_B1.clamp_min(1e-30), torch.zeros_like(centred_BD))
        else:
            v_BP = x_BD
        if self.projection_DP is not None:
            v_BP = v_BP @ self.projection_DP
        return v_BP, (v_BP.pow(2).sum(1) if self.mode == "seed" else None)

    # ---- update -------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, x_BD: torch.Tensor, acts_BM: torch.Tensor | None = None,
               center_D: torch.Tensor | None = None, *, active_idx_BK: torch.Tensor | None = None,
               active_val_BK: torch.Tensor | None = None, W_dec_MD: torch.Tensor | None = None) -> TrackerStep:
        """Fold one batch into the EMAs. Pass dense codes ``acts_BM``, or the sparse TopK codes
        ``active_idx_BK`` / ``active_val_BK`` (the faster path). ``W_dec_MD`` (unit rows) feeds the
        hole statistics when the tracker keeps them."""
        b = x_BD.shape[0]
        if active_idx_BK is not None:
            if active_val_BK is None:
                raise ValueError("active_val_BK is required with active_idx_BK")
            rows_BK = torch.arange(b, device=x_BD.device)[:, None].expand_as(active_idx_BK)
            return self.update_sparse(x_BD, rows_BK.reshape(-1), active_idx_BK.reshape(-1),
                                      active_val_BK.reshape(-1), center_D, W_dec_MD=W_dec_MD)
        if acts_BM is None:
            raise ValueError("update needs acts_BM or active_idx_BK/active_val_BK")
        v_BP, sq_B = self._input_vectors(x_BD.detach().float(), center_D)
        a_BM = (acts_BM.detach().abs() > self.tau_act).float()
        fires_M = a_BM.sum(0)
        batch_sq_M = a_BM.T @ sq_B if sq_B is not None else None
        if W_dec_MD is not None and self._hole_MK is not None:
            s = min(self.hole_rows, b)
            rows_N, latents_N = torch.nonzero(a_BM[:s] > 0, as_tuple=True)
            self._fold_holes(x_BD[:s], rows_N, latents_N, W_dec_MD, center_D)
            self._fold_cofiring(s, rows_N, latents_N)
        return self._fold(b, fires_M, a_BM.T @ v_BP, batch_sq_M)

    @torch.no_grad()
    def update_sparse(self, x_BD: torch.Tensor, rows_N: torch.Tensor, latents_N: torch.Tensor,
                      values_N: torch.Tensor, center_D: torch.Tensor | None = None, *,
                      W_dec_MD: torch.Tensor | None = None) -> TrackerStep:
        """Sparse codes as COO triples (row, latent, value): O(nnz * P) work."""
        b = x_BD.shape[0]
        v_BP, sq_B = self._input_vectors(x_BD.detach().float(), center_D)
        a_N = (values_N.detach().abs() > self.tau_act).float()
        if W_dec_MD is not None and self._hole_MK is not None:
            s = min(self.hole_rows, b)
            in_sample_N = (rows_N < s) & (a_N > 0)
            self._fold_holes(x_BD[:s], rows_N[in_sample_N], latents_N[in_sample_N], W_dec_MD, center_D)
            self._fold_cofiring(s, rows_N[in_sample_N], latents_N[in_sample_N])
        fires_M = torch.zeros(self.d_sae, device=x_BD.device).index_add_(0, latents_N, a_N)
        a_MB = latent_major_csr(latents_N, rows_N, a_N, self.d_sae, b)
        batch_sum_MP = a_MB @ v_BP
        batch_sq_M = (a_MB @ sq_B[:, None]).squeeze(1) if sq_B is not None else None
        return self._fold(b, fires_M, batch_sum_MP, batch_sq_M)

    def _fold_holes(self, x_SD: torch.Tensor, rows_N: torch.Tensor, latents_N: torch.Tensor,
                    W_dec_MD: torch.Tensor, center_D: torch.Tensor | None) -> None:
        """Hole counts on the sampled rows; (rows_N, latents_N) are their active entries. Only the
        projection and one comparison are dense (S x M); the rest is gathered at active entries."""
        x_SD = x_SD.detach().float()
        if center_D is not None:
            x_SD = x_SD - center_D.detach().float()
        # (M, S): each latent's projections contiguous, so the per-latent reductions are row sums.
        proj_MS = W_dec_MD.detach().float() @ x_SD.T
        stats_MK = self._hole_MK
        fired_M, proj_sum_M = stats_MK[:, 0], stats_MK[:, 1]
        # A latent that never fired has no mean projection yet: nothing counts as present for it.
        mu_M = torch.where(fired_M > 0, proj_sum_M / fired_M.clamp_min(torch.finfo(fired_M.dtype).tiny),
                           torch.full_like(fired_M, float("inf")))
        present_MS = proj_MS > (0.5 * mu_M)[:, None]
        batch_MK = torch.zeros_like(stats_MK)
        batch_MK[:, 2] = present_MS.sum(1, dtype=stats_MK.dtype)
        ones_N = torch.ones(latents_N.numel(), dtype=stats_MK.dtype, device=stats_MK.device)
        batch_MK[:, 0].index_add_(0, latents_N, ones_N)
        batch_MK[:, 1].index_add_(0, latents_N, proj_MS[latents_N, rows_N])
        present_active_M = torch.zeros_like(fired_M).index_add_(0, latents_N,
                                                                 present_MS[latents_N, rows_N].to(stats_MK.dtype))
        batch_MK[:, 3] = batch_MK[:, 2] - present_active_M
        stats_MK.mul_(self.beta).add_(batch_MK, alpha=1.0 - self.beta)

    def _fold(self, b: int, fires_M: torch.Tensor, batch_sum_MP: torch.Tensor,
              batch_sq_M: torch.Tensor | None) -> TrackerStep:
        beta, w = self.beta, 1.0 - self.beta
        self._freq_M.mul_(beta).add_(fires_M, alpha=w / b)
        self._count_M.mul_(beta).add_(fires_M, alpha=w)
        self._sum_MP.mul_(beta).add_(batch_sum_MP, alpha=w)
        if self._sq_M is not None:
            self._sq_M.mul_(beta).add_(batch_sq_M, alpha=w)
        return TrackerStep(fires_M=fires_M, l0=float(fires_M.sum()) / b)

    # ---- state --------------------------------------------------------------------------
    @torch.no_grad()
    def reset(self, latent_ids: torch.Tensor | list[int]) -> None:
        """Forget everything about these latents (after surgery their statistics are stale)."""
        ids = torch.as_tensor(latent_ids, dtype=torch.long, device=self._freq_M.device)
        for t in (self._freq_M, self._count_M, self._sum_MP, self._sq_M, self._hole_MK, self._cofire_MR):
            if t is not None:
                t[ids] = 0.0
        if self.neighbours_MR is not None:  # pairs whose neighbour was rewritten start over too
            self._cofire_MR[torch.isin(self.neighbours_MR, ids)] = 0.0

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        return {"frequency": self._freq_M.clone(), "count": self._count_M.clone(),
                "sums": self._sum_MP.clone(), "sq_sums": None if self._sq_M is None else self._sq_M.clone(),
                "projection": None if self.projection_DP is None else self.projection_DP.clone(),
                "holes": None if self._hole_MK is None else self._hole_MK.clone(),
                "neighbours": None if self.neighbours_MR is None else
                (self.neighbours_MR.clone(), self._nbr_cos_MR.clone(), self._cofire_MR.clone())}

    def load_state_dict(self, state: dict[str, torch.Tensor | None]) -> None:
        if state["sums"].shape != self._sum_MP.shape:
            raise ValueError(f"tracker state has shape {tuple(state['sums'].shape)}, expected {tuple(self._sum_MP.shape)}")
        dev = self._freq_M.device
        self._freq_M = state["frequency"].to(dev).clone()
        self._count_M = state["count"].to(dev).clone()
        self._sum_MP = state["sums"].to(dev).clone()
        self._sq_M = None if state["sq_sums"] is None else state["sq_sums"].to(dev).clone()
        self.projection_DP = None if state["projection"] is None else state["projection"].to(dev).clone()
        if self._hole_MK is not None and state.get("holes") is not None:
            self._hole_MK = state["holes"].to(dev).clone()
        if self._cofire_MR is not None and state.get("neighbours") is not None:
            ids_MR, cos_MR, cofire_MR = state["neighbours"]
            self.neighbours_MR, self._nbr_cos_MR, self._cofire_MR = ids_MR.to(dev), cos_MR.to(dev), cofire_MR.to(dev)


@torch.no_grad()
def encoder_suppression(W_enc_DM: torch.Tensor, W_dec_MD: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """g_p = max_c G+_pc (-supp_pc)+ per latent (module docstring), in row chunks of ``chunk``."""
    D_MD = W_dec_MD.detach().float()
    D_MD = D_MD / D_MD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    E_MD = W_enc_DM.detach().float().T
    E_MD = E_MD / E_MD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    m = D_MD.shape[0]
    out_M = torch.empty(m, device=D_MD.device)
    for start in range(0, m, chunk):
        rows = slice(start, min(start + chunk, m))
        G_CM = D_MD[rows] @ D_MD.T
        H_CM = E_MD[rows] @ D_MD.T
        h_C1 = (E_MD[rows] * D_MD[rows]).sum(1, keepdim=True)
        supp_CM = (H_CM - G_CM * h_C1) / (1.0 - G_CM.pow(2)).clamp_min(1e-6).sqrt()
        g_CM = G_CM.clamp_min(0.0) * (-supp_CM).clamp_min(0.0)
        g_CM[torch.arange(g_CM.shape[0]), torch.arange(rows.start, rows.stop)] = 0.0  # c = p
        out_M[rows] = g_CM.max(1).values
    return out_M
