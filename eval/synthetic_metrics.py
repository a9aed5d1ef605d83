"""Feature-absorption scores of an SAE against the ground truth of a SAELens synthetic model.

A :class:`sae_lens.synthetic.SyntheticModel` exposes its true feature vectors
(``model.feature_dict.feature_vectors``, F x D), its hierarchy (``model.hierarchy.roots``, trees of
``HierarchyNode`` with ``feature_index`` and ``children``) and, through ``sample_with_features``, the
true feature activations of every row.  :func:`hierarchy_truth` turns the model into
:class:`HierarchyTruth` (``V_FD``, ``parent_F`` with -1 for roots, ``depth_F`` with 0 for roots);
every function here takes either that or the model itself.

Notation.  ``v_f`` are the true vectors, ``d_j`` the SAE decoder rows, ``^`` a unit vector
(decoder rows are normalised, so row norms never matter), ``a_bj`` the SAE codes and ``g_bf`` the
true activations of held-out rows; ``cos(x, y) = x^ . y^``.  A *parent* is a feature with at least
one child; ``desc(p)`` are its proper descendants; its *depth* is its number of ancestors.

* ``l(p) = argmax_j cos(d_j, v_p)``: the latent matched to parent ``p``.
* ``f(j) = argmax_f cos(d_j, v_f)``: latent ``j``'s own feature.  Cosines within ``1e-4`` of the
  maximum count as a tie, won by the deepest feature: a latent equally close to ``v_c`` and ``v_p``
  (``d_j ~ v_c + v_p``) is read as the child's latent carrying its parent.

Metrics (names as returned by :func:`hierarchy_absorption_metrics`):

``absorption_rate`` -- the carried share, validated on an oracle SAE (0) and on an SAE built to
    absorb (on each absorbed parent: the fraction of its rows on which a child fires, 1 when it never
    fires alone; a half-absorbing SAE scores about half of that).  For latent ``j`` and parent ``p``,
    ``e_jp = d_j^ . (v_p^ - (v_p^ . v_f(j)^) v_f(j)^)``: the part of ``d_j`` along ``v_p`` that its own
    feature does not explain, with ``e_{l(p)p} = 0`` and ``e_jp <= 1e-4`` set to 0 (float32 noise: a
    latent exactly on its own feature would otherwise carry ~1e-8 of ``p`` and, on a row where
    ``l(p)`` is silent, score a share of 1).  On each row ``b`` with ``g_bp > 0``::

        own_bp   = max(0, a_{b,l(p)} * cos(d_{l(p)}, v_p))
        other_bp = sum_{j in S_bp} a_bj * max(0, e_jp)
        S_bp     = {j != l(p), a_bj > 0, cos(d_j, v_c) > 0.3 for some c in desc(p) with g_bc > 0}
        share_bp = other_bp / (own_bp + other_bp),  or 0 when own_bp + other_bp <= lost_below * g_bp
                   ("lost" row; lost_below defaults to 0, i.e. own_bp = other_bp = 0)

    ``share_p`` is the mean of ``share_bp`` over the rows where ``p`` is active.
    ``absorption_rate`` is the mean of ``share_p`` over the scored parents at depth 0 and 1;
    ``absorption_rate/depth{d}`` the mean over scored parents at depth ``d``;
    ``absorption_rate/all_depths`` the mean over all scored parents.  A parent is scored when it is
    active on at least one row.
``fully_absorbed_fraction`` -- fraction of the scored depth-0/1 parents with ``share_p > 0.5``.
``lost_fraction`` (and ``/depth{d}``) -- mean over the same parents of the fraction of their active
    rows that are lost (neither ``l(p)`` nor a child latent carries ``p``).
``n_parents_scored`` (and ``/depth{d}``, ``/all_depths``) -- number of parents behind the means above.
``n_parent_rows`` -- number of (parent, row) pairs behind ``absorption_rate``.
``decoder_absorption`` -- weights only.  Over (parent ``p``, direct child ``c``) pairs whose child
    has a matched latent, ``max_j cos(d_j, v_c) > 0.5`` with ``l(c) = argmax_j cos(d_j, v_c)``: the
    fraction of pairs with ``cos(d_{l(c)}, v_p) - cos(v_c, v_p) > 0.2``.  Overall (every depth) and
    ``decoder_absorption/depth{d}`` by the parent's depth; ``n_pairs_scored`` (and ``/depth{d}``)
    count the matched pairs.

:func:`detection_auc` is the rank ROC AUC (ties count one half) of a per-latent statistic at
separating the latents of :func:`absorbed_parent_latents` (``l(p)`` for parents with
``share_p > 0.5``) from all other latents; NaN when a class is empty.

Codes are used as given: when decoder rows are not unit norm and codes should count as
reconstruction contributions, pass ``A_BM * W_dec_MD.norm(dim=1)``.  Memory: one M x K matrix
(latent close to descendant ``k``, K = features that have a parent) and M x P matrices (P = parents);
``chunk_size`` bounds the (chunk x M) and (chunk x K) tensors of the latent and row passes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sae_lens.synthetic import SyntheticModel

ELIGIBLE_COS = 0.3  # a latent this close to an active descendant may carry the parent
CHILD_MATCH_COS = 0.5  # a child with no latent this close has no matched latent
DECODER_GAIN = 0.2  # cos gain toward the parent that marks an absorbing child decoder
FULL_SHARE = 0.5  # carried share above which a parent counts as absorbed
HEADLINE_DEPTHS = (0, 1)
TIE_TOL = 1e-4  # cosines this close count as a tie
NOISE_TOL = 1e-4  # a latent's component along v_p below this is float noise, not carried


@dataclass(frozen=True)
class HierarchyTruth:
    """The ground truth the metrics need: true vectors and the hierarchy as arrays."""

    V_FD: torch.Tensor
    parent_F: torch.Tensor  # parent feature index, -1 for roots and features outside any tree
    depth_F: torch.Tensor  # number of ancestors, 0 for roots


def hierarchy_truth(model: SyntheticModel) -> HierarchyTruth:
    """Extract (V_FD, parent_F, depth_F) from a synthetic model.

    Organisational nodes (``feature_index is None``) are skipped: a feature's parent is its nearest
    ancestor that is a feature, since that is the feature gating it.
    """
    V_FD = model.feature_dict.feature_vectors.detach().float().cpu()
    parent_F = torch.full((V_FD.shape[0],), -1, dtype=torch.long)
    depth_F = torch.zeros(V_FD.shape[0], dtype=torch.long)
    roots = model.hierarchy.roots if model.hierarchy is not None else []
    stack = [(node, -1, 0) for node in roots]
    while stack:
        node, parent, depth = stack.pop()
        if node.feature_index is not None:
            parent_F[node.feature_index] = parent
            depth_F[node.feature_index] = depth
            parent, depth = node.feature_index, depth + 1
        stack.extend((child, parent, depth) for child in node.children)
    return HierarchyTruth(V_FD, parent_F, depth_F)


def _as_truth(truth: HierarchyTruth | SyntheticModel, device: torch.device) -> HierarchyTruth:
    if isinstance(truth, SyntheticModel):
        truth = hierarchy_truth(truth)
    return HierarchyTruth(
        torch.as_tensor(truth.V_FD).detach().to(device, torch.float32),
        torch.as_tensor(truth.parent_F).to(device, torch.long),
        torch.as_tensor(truth.depth_F).to(device, torch.long))


def _unit(X_ND: torch.Tensor) -> torch.Tensor:
    return X_ND / X_ND.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _parents(parent_F: torch.Tensor) -> torch.Tensor:
    """Indices of the features that have at least one child, ascending."""
    return torch.unique(parent_F[parent_F >= 0])


def _ancestor_mask(parent_F: torch.Tensor, parents_P: torch.Tensor) -> torch.Tensor:
    """anc_FP[f, q]: parent ``parents_P[q]`` is a proper ancestor of feature ``f``."""
    F = parent_F.shape[0]
    pos_F = torch.full((F,), -1, dtype=torch.long, device=parent_F.device)
    pos_F[parents_P] = torch.arange(len(parents_P), device=parent_F.device)
    anc_FP = torch.zeros(F, len(parents_P), dtype=torch.bool, device=parent_F.device)
    cur_F = parent_F.clone()
    # One step up the tree per pass; the loop runs once per hierarchy level.
    while bool((cur_F >= 0).any()):
        rows = torch.nonzero(cur_F >= 0).squeeze(1)
        anc_FP[rows, pos_F[cur_F[rows]]] = True
        cur_F[rows] = parent_F[cur_F[rows]]
    return anc_FP


@dataclass
class _LatentGeometry:
    own_feature_M: torch.Tensor  # f(j)
    own_cos_M: torch.Tensor  # cos(d_j, v_f(j))
    near_MK: torch.Tensor  # cos(d_j, v_k) > eligible_cos for the candidate descendants k


def _latent_geometry(Dh_MD: torch.Tensor, Vh_FD: torch.Tensor, depth_F: torch.Tensor,
                     desc_K: torch.Tensor, eligible_cos: float, chunk_size: int) -> _LatentGeometry:
    """Each latent's own feature and which descendants it is close to, chunked over latents."""
    own_f, own_c, near = [], [], []
    depth_key_F = depth_F.float()
    for start in range(0, Dh_MD.shape[0], chunk_size):
        C_mF = Dh_MD[start:start + chunk_size] @ Vh_FD.T
        tied_mF = C_mF >= C_mF.max(dim=1, keepdim=True).values - TIE_TOL
        f_m = torch.where(tied_mF, depth_key_F, -1.0).argmax(dim=1)
        own_f.append(f_m)
        own_c.append(C_mF.gather(1, f_m[:, None]).squeeze(1))
        near.append(C_mF[:, desc_K] > eligible_cos)
    return _LatentGeometry(torch.cat(own_f), torch.cat(own_c), torch.cat(near))


@dataclass
class CarriedShare:
    """Per-parent carried share; see the module docstring for the formula."""

    parent_P: torch.Tensor  # feature index of each scored parent
    depth_P: torch.Tensor
    latent_P: torch.Tensor  # l(p)
    share_P: torch.Tensor  # mean carried share over the parent's active rows
    lost_P: torch.Tensor  # fraction of those rows lost
    rows_P: torch.Tensor  # number of active rows

    def summary(self, headline_depths: Sequence[int] = HEADLINE_DEPTHS,
                full_share: float = FULL_SHARE) -> dict[str, float]:
        wanted = torch.as_tensor(list(headline_depths), device=self.depth_P.device)
        head_P = torch.isin(self.depth_P, wanted)
        out = {
            "absorption_rate": _mean(self.share_P[head_P]),
            "absorption_rate/all_depths": _mean(self.share_P),
            "fully_absorbed_fraction": _mean((self.share_P[head_P] > full_share).float()),
            "lost_fraction": _mean(self.lost_P[head_P]),
            "n_parents_scored": float(head_P.sum()),
            "n_parents_scored/all_depths": float(len(self.parent_P)),
            "n_parent_rows": float(self.rows_P[head_P].sum()),
        }
        for d in sorted(set(self.depth_P.tolist())):
            at_P = self.depth_P == d
            out[f"absorption_rate/depth{d}"] = _mean(self.share_P[at_P])
            out[f"lost_fraction/depth{d}"] = _mean(self.lost_P[at_P])
            out[f"n_parents_scored/depth{d}"] = float(at_P.sum())
        return out


def _mean(x: torch.Tensor) -> float:
    return float(x.float().mean()) if x.numel() else float("nan")


def carried_share(truth: HierarchyTruth | SyntheticModel, W_dec_MD: torch.Tensor, A_BM: torch.Tensor,
                  G_BF: torch.Tensor, *, eligible_cos: float = ELIGIBLE_COS, lost_below: float = 0.0,
                  chunk_size: int = 4096) -> CarriedShare:
    """Share of each parent's direction carried by child latents on the rows where it fires.

    ``lost_below`` > 0 also counts as lost the rows where the SAE carries less than that fraction of
    the parent's true activation (codes compared with ``g_bp``, so it assumes unit-norm decoders).
    """
    device = A_BM.device
    t = _as_truth(truth, device)
    Vh_FD, Dh_MD = _unit(t.V_FD), _unit(W_dec_MD.detach().to(device, torch.float32))
    A_BM = A_BM.detach().float()
    G_BF = (G_BF.to_dense() if G_BF.is_sparse else G_BF).detach().to(device)
    parents_P = _parents(t.parent_F)
    desc_K = torch.nonzero(t.parent_F >= 0).squeeze(1)  # every feature that is someone's descendant
    anc_KP = _ancestor_mask(t.parent_F, parents_P)[desc_K]
    geo = _latent_geometry(Dh_MD, Vh_FD, t.depth_F, desc_K, eligible_cos, chunk_size)

    C_MP = Dh_MD @ Vh_FD[parents_P].T
    latent_P = C_MP.argmax(dim=0)
    own_cos_P = C_MP[latent_P, torch.arange(len(parents_P), device=device)]
    # e_jp: the latent's component along v_p minus what its own feature accounts for.
    E_MP = C_MP - (Vh_FD[geo.own_feature_M] @ Vh_FD[parents_P].T) * geo.own_cos_M[:, None]
    E_MP = torch.where(E_MP > NOISE_TOL, E_MP, 0.0)
    E_MP[latent_P, torch.arange(len(parents_P), device=device)] = 0.0
    near_KM = geo.near_MK.T.float()

    row_N, q_N = torch.nonzero(G_BF[:, parents_P] > 0, as_tuple=True)
    share_N = torch.empty(len(row_N), device=device)
    lost_N = torch.empty(len(row_N), dtype=torch.bool, device=device)
    for s in range(0, len(row_N), chunk_size):
        b_n, q_n = row_N[s:s + chunk_size], q_N[s:s + chunk_size]
        A_nM = A_BM[b_n]
        active_desc_nK = (G_BF[b_n][:, desc_K] > 0) & anc_KP[:, q_n].T
        eligible_nM = (active_desc_nK.float() @ near_KM > 0) & (A_nM > 0)
        other_n = (A_nM * E_MP[:, q_n].T * eligible_nM).sum(dim=1)
        own_n = (A_nM.gather(1, latent_P[q_n][:, None]).squeeze(1) * own_cos_P[q_n]).clamp(min=0)
        total_n = own_n + other_n
        lost_n = total_n <= lost_below * G_BF[b_n, parents_P[q_n]]  # p not carried: lost, not absorbed
        lost_N[s:s + chunk_size] = lost_n
        share_N[s:s + chunk_size] = torch.where(lost_n, 0.0, other_n / total_n.clamp(min=1e-30))

    rows_P = torch.bincount(q_N, minlength=len(parents_P))
    scored_P = rows_P > 0
    n_P = rows_P.clamp(min=1).float()
    share_P = torch.bincount(q_N, weights=share_N, minlength=len(parents_P)) / n_P
    lost_P = torch.bincount(q_N, weights=lost_N.float(), minlength=len(parents_P)) / n_P
    return CarriedShare(parents_P[scored_P], t.depth_F[parents_P][scored_P], latent_P[scored_P],
                        share_P[scored_P], lost_P[scored_P], rows_P[scored_P])


@dataclass
class DecoderAbsorption:
    """Per (parent, direct child) pair; see the module docstring for the formula."""

    parent_Q: torch.Tensor
    child_Q: torch.Tensor
    depth_Q: torch.Tensor  # depth of the parent
    matched_Q: torch.Tensor  # the child has a latent with cos > child_match_cos
    gain_Q: torch.Tensor  # cos(d_l(c), v_p) - cos(v_c, v_p)
    absorbed_Q: torch.Tensor  # matched and gain > min_gain

    def summary(self) -> dict[str, float]:
        out = {"decoder_absorption": _mean(self.absorbed_Q[self.matched_Q]),
               "n_pairs_scored": float(self.matched_Q.sum())}
        for d in sorted(set(self.depth_Q.tolist())):
            at_Q = self.matched_Q & (self.depth_Q == d)
            out[f"decoder_absorption/depth{d}"] = _mean(self.absorbed_Q[at_Q])
            out[f"n_pairs_scored/depth{d}"] = float(at_Q.sum())
        return out


def decoder_absorption(truth: HierarchyTruth | SyntheticModel, W_dec_MD: torch.Tensor, *,
                       child_match_cos: float = CHILD_MATCH_COS,
                       min_gain: float = DECODER_GAIN) -> DecoderAbsorption:
    """Whether each child's best latent leans toward its parent more than the child itself does."""
    device = W_dec_MD.device
    t = _as_truth(truth, device)
    Vh_FD, Dh_MD = _unit(t.V_FD), _unit(W_dec_MD.detach().float())
    child_Q = torch.nonzero(t.parent_F >= 0).squeeze(1)
    parent_Q = t.parent_F[child_Q]
    C_MQ = Dh_MD @ Vh_FD[child_Q].T
    best_Q, latent_Q = C_MQ.max(dim=0)
    gain_Q = (Dh_MD[latent_Q] * Vh_FD[parent_Q]).sum(1) - (Vh_FD[child_Q] * Vh_FD[parent_Q]).sum(1)
    matched_Q = best_Q > child_match_cos
    return DecoderAbsorption(parent_Q, child_Q, t.depth_F[parent_Q], matched_Q, gain_Q,
                             matched_Q & (gain_Q > min_gain))


def absorbed_parent_latents(share: CarriedShare, num_latents: int, *, threshold: float = FULL_SHARE,
                            depths: Sequence[int] | None = None) -> torch.Tensor:
    """Bool mask over latents: ``l(p)`` of the parents (at ``depths``; all if None) with share > threshold."""
    keep_P = share.share_P > threshold
    if depths is not None:
        keep_P &= torch.isin(share.depth_P, torch.as_tensor(list(depths), device=share.depth_P.device))
    mask_M = torch.zeros(num_latents, dtype=torch.bool)
    mask_M[share.latent_P[keep_P].cpu()] = True
    return mask_M


def _average_ranks(x_N: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    _, inverse_N, counts_U = np.unique(x_N, return_inverse=True, return_counts=True)
    first_U = np.concatenate([[0], np.cumsum(counts_U)[:-1]])
    return (first_U + (counts_U + 1) / 2.0)[inverse_N]


def detection_auc(statistic_M: torch.Tensor | np.ndarray,
                  absorbed_latents_mask_M: torch.Tensor | np.ndarray) -> float:
    """ROC AUC of ``statistic_M`` (higher = more absorbed) for the mask; non-finite values are dropped."""
    stat_M = np.asarray(torch.as_tensor(statistic_M).detach().cpu(), dtype=np.float64)
    pos_M = np.asarray(torch.as_tensor(absorbed_latents_mask_M).cpu(), dtype=bool)
    keep_M = np.isfinite(stat_M)
    stat_M, pos_M = stat_M[keep_M], pos_M[keep_M]
    n_pos, n_neg = int(pos_M.sum()), int((~pos_M).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U of the positives, normalised to [0, 1].
    u = _average_ranks(stat_M)[pos_M].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def hierarchy_absorption_metrics(truth: HierarchyTruth | SyntheticModel, W_dec_MD: torch.Tensor,
                                 A_BM: torch.Tensor, G_BF: torch.Tensor, *,
                                 eligible_cos: float = ELIGIBLE_COS, child_match_cos: float = CHILD_MATCH_COS,
                                 min_gain: float = DECODER_GAIN, full_share: float = FULL_SHARE,
                                 lost_below: float = 0.0, chunk_size: int = 4096) -> dict[str, float]:
    """Every metric of the module docstring, as a flat ``name -> value`` dict."""
    device = A_BM.device
    t = _as_truth(truth, device)
    share = carried_share(t, W_dec_MD, A_BM, G_BF, eligible_cos=eligible_cos, lost_below=lost_below,
                          chunk_size=chunk_size)
    geometry = decoder_absorption(t, W_dec_MD.to(device), child_match_cos=child_match_cos, min_gain=min_gain)
    return {**share.summary(full_share=full_share), **geometry.summary()}
