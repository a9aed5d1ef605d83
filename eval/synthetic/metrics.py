"""Feature-absorption scores of an SAE against the ground truth of a SAELens synthetic model.

A :class:`sae_lens.synthetic.SyntheticModel` exposes its true feature vectors
(``model.feature_dict.feature_vectors``, F x D, unit rows), its hierarchy (``model.hierarchy.roots``,
trees of ``HierarchyNode`` with ``feature_index`` and ``children``) and, through
``sample_with_features``, the true feature activations of every row.  :func:`hierarchy_truth` turns the
model into :class:`HierarchyTruth` (``V_FD``, ``parent_F`` with -1 for roots, ``depth_F`` with 0 for
roots); every function here takes either that or the model itself.

Notation.  ``v_f`` are the true vectors, ``d_j`` the SAE decoder rows, ``^`` a unit vector
(decoder rows are normalised, so row norms never matter), ``a_bj`` the SAE codes and ``g_bf`` the
true activations of held-out rows; ``cos(x, y) = x^ . y^``.  A *parent* is a feature with at least
one child; ``desc(p)`` are its proper descendants; its *depth* is its number of ancestors.

* ``f(j) = argmax_f cos(d_j, v_f)``: latent ``j``'s own feature.  Cosines within ``1e-4`` of the
  maximum count as a tie, won by the deepest feature: a latent equally close to ``v_c`` and ``v_p``
  (``d_j ~ v_c + v_p``) is read as the child's latent carrying its parent.
* ``e_jp = d_j^ . (v_p^ - (v_p^ . v_f(j)^) v_f(j)^)``: the part of ``d_j`` along ``v_p`` that its own
  feature does not explain, set to 0 when ``<= 1e-4`` (float32 noise).
* ``S_bp = {j : a_bj > 0, cos(d_j, v_c) > 0.3 for some c in desc(p) with g_bc > 0}``: the active
  latents close to a descendant of ``p`` that is active on row ``b`` (``eligible_cos``).
* ``other_bp = sum_{j in S_bp, j not own} a_bj e_jp``: what those latents carry along ``v_p`` beyond
  their own feature.

Metrics (names as returned by :func:`hierarchy_absorption_metrics`):

``absorption_rate`` -- the headline, the *absorbed-or-lost share* (:func:`parent_mass`): the share of a
    parent's mass that its own latents do not carry.  Own latents are tied to ``p`` by a thresholded,
    mutual match: ``l(p) = argmax_j cos(d_j, v_p)`` is ``p``'s latent when ``cos(d_{l(p)}, v_p) > own_cos``
    (0.5) and ``f(l(p)) = p``; then ``O(p) = {j : f(j) = p, cos(d_j, v_p) > own_cos}`` (``l(p)`` and every
    other latent aligned with ``p``, e.g. duplicates), otherwise ``O(p)`` is empty and nothing of ``p``
    is ever own.  On each row ``b`` with ``g_bp > 0``::

        own_bp      = sum_{j in O(p)} max(0, a_bj)     (the activation the own latents give p)
        m_bp        = max(g_bp, own_bp + other_bp)     (the parent's mass, or what is carried if more)
        share_bp    = 1 - own_bp / m_bp                (= absorbed_bp + lost_bp)
        absorbed_bp = other_bp / m_bp
        lost_bp     = 1 - (own_bp + other_bp) / m_bp   (>= 0)

    Own latents count with their whole code: an own latent's activation is the SAE's estimate of
    ``g_bp`` (the purity of its decoder is left to MCC and the decoder metrics), whereas ``other_bp``
    counts only the part of a child latent along ``v_p`` beyond its own feature.  A row nobody carries scores 1
    (all lost); a row the own latents carry in full (``own_bp >= g_bp``, nothing else) scores 0; when more
    than ``g_bp`` is carried the share is the ratio ``other / (own + other)``.

    ``share_p`` is the mean of ``share_bp`` over the rows where ``p`` is active;
    ``absorption_rate`` the mean of ``share_p`` over the scored parents at depth 0 and 1,
    ``absorption_rate/depth{d}`` over those at depth ``d``, ``absorption_rate/all_depths`` over all
    scored parents (a parent is scored when it is active on at least one row).  ``absorbed_share`` and
    ``lost_share`` (and ``/depth{d}``) are the same means of ``absorbed_bp`` and ``lost_bp``; they add up
    to ``absorption_rate``.  Limit: codes above ``g_bp`` are not penalised, so own latents that fire
    too strongly (e.g. copies that all fire at full weight, reconstructing the parent twice) lower the
    share; that error shows in the explained variance, which the headline is read with.
``fully_absorbed_fraction`` -- fraction of the scored depth-0/1 parents with ``share_p > 0.5``.
``unmatched_parent_fraction`` (and ``/depth{d}``) -- fraction of the scored depth-0/1 parents (at
    depth ``d``) with no own latent.
``own_latents_per_parent`` -- mean ``|O(p)|`` over the scored depth-0/1 parents.
``n_parents_scored`` (and ``/depth{d}``, ``/all_depths``) -- number of parents behind the means above.
``n_parent_rows`` -- number of (parent, row) pairs behind ``absorption_rate``.
``carried_share`` (and ``/depth{d}``) -- the earlier headline (:func:`carried_share`), kept to compare
    with: ``l(p)`` the unthresholded argmax, only ``l(p)`` is own (``own_bp = max(0, a_{b,l(p)}
    cos(d_{l(p)}, v_p))``, ``e_{l(p)p} = 0``), ``share_bp = other_bp / (own_bp + other_bp)``, and a row where
    ``own_bp + other_bp <= lost_below * g_bp`` (default: nothing carried) scores 0.  It rewards losing
    the parent (an SAE that never fires scores 0) and ignores every own latent but the argmax.
    ``carried_share_lost_rows`` is the mean fraction of such rows.
``decoder_absorption`` -- weights only.  Over (parent ``p``, direct child ``c``) pairs whose child
    has a matched latent, ``max_j cos(d_j, v_c) > 0.5`` with ``l(c) = argmax_j cos(d_j, v_c)``: the
    fraction of pairs with ``cos(d_{l(c)}, v_p) - cos(v_c, v_p) > 0.2``.  Overall (every depth) and
    ``decoder_absorption/depth{d}`` by the parent's depth; ``n_pairs_scored`` (and ``/depth{d}``)
    count the matched pairs.

:func:`eval.detection.detection_auc` is the rank ROC AUC (ties count one half) of a per-latent statistic
at separating the latents of :func:`absorbed_parent_latents` (``l(p)`` for parents with an own latent and
``share_p > 0.5``) from all other latents; NaN when a class is empty.

Codes are used as given: when decoder rows are not unit norm and codes should count as
reconstruction contributions, pass ``A_BM * W_dec_MD.norm(dim=1)``; the absorbed-or-lost share also
compares them with ``g_bp``, so they must be in the activations' units.  Memory: one M x K matrix
(latent close to descendant ``k``, K = features that have a parent) and M x P matrices (P = parents);
``chunk_size`` bounds the (chunk x M) and (chunk x K) tensors of the latent and row passes.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from sae_lens.synthetic import SyntheticModel

OWN_COS = 0.5  # a parent's own latents are closer than this to the parent
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


def _per_parent_mean(q_N: torch.Tensor, x_N: torch.Tensor, rows_P: torch.Tensor) -> torch.Tensor:
    return torch.bincount(q_N, weights=x_N.float(), minlength=len(rows_P)) / rows_P.clamp(min=1).float()


def _mean(x: torch.Tensor) -> float:
    return float(x.float().mean()) if x.numel() else float("nan")


@dataclass
class _Scoring:
    """What both parent scores share: unit vectors, the hierarchy as index tensors, the geometry."""

    Vh_FD: torch.Tensor
    Dh_MD: torch.Tensor
    A_BM: torch.Tensor
    G_BF: torch.Tensor  # dense
    depth_F: torch.Tensor
    parents_P: torch.Tensor
    desc_K: torch.Tensor  # every feature that is someone's descendant
    anc_KP: torch.Tensor  # parents_P[q] is a proper ancestor of desc_K[k]
    geo: _LatentGeometry
    C_MP: torch.Tensor  # cos(d_j, v_p)

    def residual_MP(self) -> torch.Tensor:
        """e_jp: latent j's component along v_p minus what its own feature accounts for (noise -> 0)."""
        E_MP = self.C_MP - (self.Vh_FD[self.geo.own_feature_M] @ self.Vh_FD[self.parents_P].T) \
            * self.geo.own_cos_M[:, None]
        return torch.where(E_MP > NOISE_TOL, E_MP, 0.0)


def _scoring(truth: HierarchyTruth | SyntheticModel, W_dec_MD: torch.Tensor, A_BM: torch.Tensor,
             G_BF: torch.Tensor, eligible_cos: float, chunk_size: int) -> _Scoring:
    device = A_BM.device
    t = _as_truth(truth, device)
    Vh_FD, Dh_MD = _unit(t.V_FD), _unit(W_dec_MD.detach().to(device, torch.float32))
    parents_P = _parents(t.parent_F)
    desc_K = torch.nonzero(t.parent_F >= 0).squeeze(1)
    return _Scoring(Vh_FD, Dh_MD, A_BM.detach().float(),
                    (G_BF.to_dense() if G_BF.is_sparse else G_BF).detach().to(device).float(),
                    t.depth_F, parents_P, desc_K, _ancestor_mask(t.parent_F, parents_P)[desc_K],
                    _latent_geometry(Dh_MD, Vh_FD, t.depth_F, desc_K, eligible_cos, chunk_size),
                    Dh_MD @ Vh_FD[parents_P].T)


def _pair_sums(s: _Scoring, own_weight_MP: torch.Tensor, E_MP: torch.Tensor, chunk_size: int, *,
               clamp_own: bool) -> tuple[torch.Tensor, ...]:
    """Over every (active row b, parent p) pair: (row_N, q_N, own_N, other_N, g_N).

    ``own_N = sum_j a_bj own_weight_jp`` (``max(0, a_bj)`` if ``clamp_own``); ``other_N = sum_j a_bj E_jp``
    over the active latents close (cos > eligible_cos) to a descendant of p active on the row;
    ``g_N = g_bp``.
    """
    row_N, q_N = torch.nonzero(s.G_BF[:, s.parents_P] > 0, as_tuple=True)
    near_KM = s.geo.near_MK.T.float()
    own_N = torch.empty(len(row_N), device=s.A_BM.device)
    other_N = torch.empty(len(row_N), device=s.A_BM.device)
    for start in range(0, len(row_N), chunk_size):  # chunks of rows: bounded (chunk x M) tensors
        b_n, q_n = row_N[start:start + chunk_size], q_N[start:start + chunk_size]
        A_nM = s.A_BM[b_n]
        active_desc_nK = (s.G_BF[b_n][:, s.desc_K] > 0) & s.anc_KP[:, q_n].T
        eligible_nM = (active_desc_nK.float() @ near_KM > 0) & (A_nM > 0)
        other_N[start:start + chunk_size] = (A_nM * E_MP[:, q_n].T * eligible_nM).sum(dim=1)
        own_nM = A_nM.clamp(min=0) if clamp_own else A_nM
        own_N[start:start + chunk_size] = (own_nM * own_weight_MP[:, q_n].T).sum(dim=1)
    return row_N, q_N, own_N, other_N, s.G_BF[row_N, s.parents_P[q_N]]


def _depth_summary(name: str, x_P: torch.Tensor, depth_P: torch.Tensor) -> dict[str, float]:
    return {f"{name}/depth{d}": _mean(x_P[depth_P == d]) for d in sorted(set(depth_P.tolist()))}


def _headline_mask(depth_P: torch.Tensor, headline_depths: Sequence[int]) -> torch.Tensor:
    return torch.isin(depth_P, torch.as_tensor(list(headline_depths), device=depth_P.device))


@dataclass
class ParentMass:
    """Per parent: how its mass splits into own / absorbed / lost; see the module docstring."""

    parent_P: torch.Tensor  # feature index of each scored parent
    depth_P: torch.Tensor
    latent_P: torch.Tensor  # l(p), the mutual match; -1 for a parent with no own latent
    n_own_P: torch.Tensor  # number of own latents (l(p) and every other latent of O(p))
    share_P: torch.Tensor  # absorbed-or-lost share (mean over the parent's active rows)
    absorbed_P: torch.Tensor
    lost_P: torch.Tensor
    rows_P: torch.Tensor  # number of active rows

    def summary(self, headline_depths: Sequence[int] = HEADLINE_DEPTHS,
                full_share: float = FULL_SHARE) -> dict[str, float]:
        head_P = _headline_mask(self.depth_P, headline_depths)
        unmatched_P = (self.latent_P < 0).float()
        out = {
            "absorption_rate": _mean(self.share_P[head_P]),
            "absorption_rate/all_depths": _mean(self.share_P),
            "absorbed_share": _mean(self.absorbed_P[head_P]),
            "lost_share": _mean(self.lost_P[head_P]),
            "fully_absorbed_fraction": _mean((self.share_P[head_P] > full_share).float()),
            "unmatched_parent_fraction": _mean(unmatched_P[head_P]),
            "own_latents_per_parent": _mean(self.n_own_P[head_P]),
            "n_parents_scored": float(head_P.sum()),
            "n_parents_scored/all_depths": float(len(self.parent_P)),
            "n_parent_rows": float(self.rows_P[head_P].sum()),
        }
        for name, x_P in (("absorption_rate", self.share_P), ("absorbed_share", self.absorbed_P),
                          ("lost_share", self.lost_P), ("unmatched_parent_fraction", unmatched_P)):
            out.update(_depth_summary(name, x_P, self.depth_P))
        out.update({f"n_parents_scored/depth{d}": float((self.depth_P == d).sum())
                    for d in sorted(set(self.depth_P.tolist()))})
        return out


def parent_mass(truth: HierarchyTruth | SyntheticModel, W_dec_MD: torch.Tensor, A_BM: torch.Tensor,
                G_BF: torch.Tensor, *, own_cos: float = OWN_COS, eligible_cos: float = ELIGIBLE_COS,
                chunk_size: int = 4096) -> ParentMass:
    """The share of each parent's mass that its own latents do not carry (absorbed or lost)."""
    s = _scoring(truth, W_dec_MD, A_BM, G_BF, eligible_cos, chunk_size)
    q_P = torch.arange(len(s.parents_P), device=s.C_MP.device)
    best_P = s.C_MP.argmax(dim=0)
    matched_P = (s.geo.own_feature_M[best_P] == s.parents_P) & (s.C_MP[best_P, q_P] > own_cos)
    own_MP = (s.geo.own_feature_M[:, None] == s.parents_P[None, :]) & (s.C_MP > own_cos) & matched_P[None, :]
    row_N, q_N, own_N, other_N, g_N = _pair_sums(s, own_MP.float(), s.residual_MP().masked_fill(own_MP, 0.0),
                                                 chunk_size, clamp_own=True)
    mass_N = torch.maximum(g_N, own_N + other_N)
    absorbed_N = other_N / mass_N
    share_N = 1.0 - own_N / mass_N
    rows_P = torch.bincount(q_N, minlength=len(s.parents_P))
    scored_P = rows_P > 0
    share_P = _per_parent_mean(q_N, share_N, rows_P)
    absorbed_P = _per_parent_mean(q_N, absorbed_N, rows_P)
    return ParentMass(s.parents_P[scored_P], s.depth_F[s.parents_P][scored_P],
                      torch.where(matched_P, best_P, -1)[scored_P], own_MP.sum(dim=0)[scored_P],
                      share_P[scored_P], absorbed_P[scored_P], (share_P - absorbed_P)[scored_P], rows_P[scored_P])


@dataclass
class CarriedShare:
    """Per parent: the carried share (the earlier definition); see the module docstring."""

    parent_P: torch.Tensor  # feature index of each scored parent
    depth_P: torch.Tensor
    latent_P: torch.Tensor  # argmax_j cos(d_j, v_p), unthresholded
    share_P: torch.Tensor  # mean carried share over the parent's active rows
    lost_P: torch.Tensor  # fraction of those rows lost
    rows_P: torch.Tensor  # number of active rows

    def summary(self, headline_depths: Sequence[int] = HEADLINE_DEPTHS) -> dict[str, float]:
        head_P = _headline_mask(self.depth_P, headline_depths)
        return {"carried_share": _mean(self.share_P[head_P]),
                "carried_share_lost_rows": _mean(self.lost_P[head_P]),
                **_depth_summary("carried_share", self.share_P, self.depth_P)}


def carried_share(truth: HierarchyTruth | SyntheticModel, W_dec_MD: torch.Tensor, A_BM: torch.Tensor,
                  G_BF: torch.Tensor, *, eligible_cos: float = ELIGIBLE_COS, lost_below: float = 0.0,
                  chunk_size: int = 4096) -> CarriedShare:
    """The earlier carried share: the share of each parent's direction carried by child latents on
    the rows where it is carried at all.

    ``lost_below`` > 0 also counts as lost the rows where the SAE carries less than that fraction of
    the parent's true activation (codes compared with ``g_bp``, so it assumes unit-norm decoders).
    """
    s = _scoring(truth, W_dec_MD, A_BM, G_BF, eligible_cos, chunk_size)
    q_P = torch.arange(len(s.parents_P), device=s.C_MP.device)
    latent_P = s.C_MP.argmax(dim=0)
    own_weight_MP = torch.zeros_like(s.C_MP)
    own_weight_MP[latent_P, q_P] = s.C_MP[latent_P, q_P]
    E_MP = s.residual_MP()
    E_MP[latent_P, q_P] = 0.0
    row_N, q_N, own_N, other_N, g_N = _pair_sums(s, own_weight_MP, E_MP, chunk_size, clamp_own=False)
    own_N = own_N.clamp(min=0)
    total_N = own_N + other_N
    lost_N = total_N <= lost_below * g_N  # p not carried: lost, not absorbed
    share_N = torch.where(lost_N, 0.0, other_N / total_N.clamp(min=1e-30))
    rows_P = torch.bincount(q_N, minlength=len(s.parents_P))
    scored_P = rows_P > 0
    return CarriedShare(s.parents_P[scored_P], s.depth_F[s.parents_P][scored_P], latent_P[scored_P],
                        _per_parent_mean(q_N, share_N, rows_P)[scored_P],
                        _per_parent_mean(q_N, lost_N, rows_P)[scored_P], rows_P[scored_P])


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


def absorbed_parent_latents(share: ParentMass | CarriedShare, num_latents: int, *,
                            threshold: float = FULL_SHARE, depths: Sequence[int] | None = None) -> torch.Tensor:
    """Bool mask over latents: ``l(p)`` of the parents (at ``depths``; all if None) with share >
    threshold; a parent with no own latent (``l(p) = -1``) marks nothing."""
    keep_P = (share.share_P > threshold) & (share.latent_P >= 0)
    if depths is not None:
        keep_P &= torch.isin(share.depth_P, torch.as_tensor(list(depths), device=share.depth_P.device))
    mask_M = torch.zeros(num_latents, dtype=torch.bool)
    mask_M[share.latent_P[keep_P].cpu()] = True
    return mask_M


def hierarchy_absorption_metrics(truth: HierarchyTruth | SyntheticModel, W_dec_MD: torch.Tensor,
                                 A_BM: torch.Tensor, G_BF: torch.Tensor, *, own_cos: float = OWN_COS,
                                 eligible_cos: float = ELIGIBLE_COS, child_match_cos: float = CHILD_MATCH_COS,
                                 min_gain: float = DECODER_GAIN, full_share: float = FULL_SHARE,
                                 lost_below: float = 0.0, chunk_size: int = 4096) -> dict[str, float]:
    """Every metric of the module docstring, as a flat ``name -> value`` dict (``lost_below``: the
    carried share's option)."""
    device = A_BM.device
    t = _as_truth(truth, device)
    mass = parent_mass(t, W_dec_MD, A_BM, G_BF, own_cos=own_cos, eligible_cos=eligible_cos, chunk_size=chunk_size)
    carried = carried_share(t, W_dec_MD, A_BM, G_BF, eligible_cos=eligible_cos, lost_below=lost_below,
                            chunk_size=chunk_size)
    geometry = decoder_absorption(t, W_dec_MD.to(device), child_match_cos=child_match_cos, min_gain=min_gain)
    return {**mass.summary(full_share=full_share), **carried.summary(), **geometry.summary()}
