"""What a latent of an SAE trained on a synthetic model stands for: the true features its decoder row
is closest to (cosine), each with its place in the hierarchy (its parent and children, and the latent
of the SAE that matches each of them best). The synthetic model is the run's own, checked against the
config hash the SAE recorded; its rows carry no tokens, so their contexts are the rows alone."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from fc_base.errors import ConfigError
from fc_base.sae_folder import SAELENS_CFG_FILE, SAEMeta
from pipeline.dashboard.options import Context, ContextToken
from pipeline.dashboard.scan import TopActivations

N_FEATURES = 3
"""True features shown per latent (closest first)."""
MAX_CHILDREN = 8


class Relative(NamedTuple):
    """A parent or child of a matched feature, and the SAE's latent closest to it."""

    feature: int
    latent: int
    cosine: float


class FeatureMatch(NamedTuple):
    """A true feature a latent's decoder row is close to."""

    feature: int
    cosine: float
    depth: int
    parent: Relative | None
    children: list[Relative]
    n_children: int


def is_synthetic(meta: SAEMeta) -> bool:
    return meta.model_name.startswith("synth/")


def check_synthetic_source(run_dir: Path, folder: Path, meta: SAEMeta) -> str:
    """The run's synthetic config file ('' for a built-in model), after checking that the SAE was
    trained on that config (the hash its cfg.json records)."""
    import json

    from pipeline.rundir import load_run_config
    from pipeline.synthetic_models import config_hash, synthetic_config

    cfg = load_run_config(run_dir)
    config_file = cfg.model.synthetic_config if cfg is not None and cfg.model.name == meta.model_name else ""
    wanted = config_hash(synthetic_config(meta.model_name, config_file or None))
    recorded = json.loads((folder / SAELENS_CFG_FILE).read_text()).get("metadata", {}).get("synthetic_config_hash") \
        if (folder / SAELENS_CFG_FILE).is_file() else None
    if recorded is not None and recorded != wanted:
        raise ConfigError(f"{meta.name} was trained on {meta.model_name} with config {recorded}, but the run's "
                          f"synthetic model has config {wanted}")
    return config_file


def _model(run_dir: Path, folder: Path, meta: SAEMeta):
    from pipeline.synthetic_models import load_synthetic_model

    return load_synthetic_model(meta.model_name, check_synthetic_source(run_dir, folder, meta) or None)


@torch.no_grad()
def feature_matches(run_dir: Path, folder: Path, meta: SAEMeta, W_dec_SD: torch.Tensor,
                    latents: list[int]) -> dict[int, list[FeatureMatch]]:
    """Per latent, its :data:`N_FEATURES` closest true features with their parents and children."""
    from eval.synthetic.metrics import hierarchy_truth

    truth = hierarchy_truth(_model(run_dir, folder, meta))
    V_FD = truth.V_FD / truth.V_FD.norm(dim=1, keepdim=True)
    dec_SD = W_dec_SD.float() / W_dec_SD.float().norm(dim=1, keepdim=True)
    cos_SF = dec_SD @ V_FD.T
    best_cos_F, best_latent_F = cos_SF.max(dim=0)  # the SAE's closest latent to every true feature
    parent_F = truth.parent_F

    def relative(f: int) -> Relative:
        return Relative(f, int(best_latent_F[f]), float(best_cos_F[f]))

    out: dict[int, list[FeatureMatch]] = {}
    for i in latents:
        cos_k, feat_k = cos_SF[i].topk(min(N_FEATURES, V_FD.shape[0]))
        matches = []
        for f, c in zip(feat_k.tolist(), cos_k.tolist()):
            children = torch.nonzero(parent_F == f).flatten().tolist()
            p = int(parent_F[f])
            matches.append(FeatureMatch(f, c, int(truth.depth_F[f]), relative(p) if p >= 0 else None,
                                        [relative(ch) for ch in children[:MAX_CHILDREN]], len(children)))
        out[i] = matches
    return out


def row_contexts(store, top: TopActivations) -> list[list[Context]]:
    """Per latent, its top rows: a synthetic row is one independent sample, with no tokens around it
    (its ``doc_id`` is its harvest group, its position the sample's index in that group's stream)."""
    import numpy as np

    from pipeline.dashboard.scan import gather_rows

    rows_NM = top.top_rows_NM.numpy()
    wanted = np.unique(rows_NM[rows_NM >= 0])
    group = dict(zip(wanted.tolist(), gather_rows(store, "doc_ids", wanted).tolist()))
    index = dict(zip(wanted.tolist(), gather_rows(store, "positions", wanted).tolist()))
    out = []
    for m in range(len(top.latents_M)):
        contexts = []
        for n in range(top.top_rows_NM.shape[0]):
            row, value = int(top.top_rows_NM[n, m]), float(top.top_vals_NM[n, m])
            if row < 0 or value <= 0:
                break
            contexts.append(Context(row, int(group[row]), int(index[row]), value,
                                    [ContextToken(-1, f"sample {index[row]} of group {group[row]}", value, True)], 0))
        out.append(contexts)
    return out
