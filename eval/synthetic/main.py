"""The ``synthetic`` eval: an SAE trained on a synthetic model's activations, scored against the
model's ground-truth features.

- SAELens's ``eval_sae_on_synthetic_data`` (the SynthSAEBench metrics): ``mcc``, ``uniqueness``,
  ``f1``, ``precision``, ``recall``, ``explained_variance``, ``l0``, ``true_l0``, ``dead_latents``,
  ``shrinkage``, on ``n_rows`` fresh samples drawn from a seeded stream;
- hierarchy absorption (:mod:`eval.synthetic.metrics`): ``absorption_rate`` (the absorbed-or-lost
  share: the share of a parent's mass its own latents do not carry, roots and depth 1), its two parts
  ``absorbed_share`` and ``lost_share``, ``fully_absorbed_fraction``, ``unmatched_parent_fraction``,
  per-depth values, the earlier ``carried_share``, ``decoder_absorption`` and the number of
  parents/pairs scored, on the held-out rows ``pipeline.evaluate`` passes in (``inputs.heldout``:
  activations and true feature activations, from a seed no harvest uses);
- ``detect_auc_<statistic>``: for each per-latent statistic the training recorded (last snapshot of
  ``fc_history.parquet``), the ROC AUC at telling the matched latents l(p) of absorbed parents
  (absorbed-or-lost share > 0.5) from the rest. ``inconsistency`` is 1 - consistency.

Why the absorbed-or-lost share: with compensated probabilities and mutually exclusive children a parent
almost never fires alone, so "parent recall alone vs with a child" has no rows; the carried share
(child latents' part of what is carried) had rows but scored an SAE that loses its parents, or never
fires at all, as unabsorbed.  The absorbed-or-lost share counts every part of the parent its own latents
(a thresholded, mutual match, duplicates included) do not carry; degenerate SAEs score no better than
a trained one and an oracle about 0 (tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from eval.detection import detection_aucs
from eval.spec import EvalInputs, EvalOptions, EvalOutput, EvalSpec, register
from fc_base.errors import check
from fc_base.sae_folder import HISTORY_FILE

@dataclass
class SyntheticOptions(EvalOptions):
    section = "synthetic"
    n_rows: int = 100_000
    """Fresh samples for SAELens's metrics (F1, MCC, explained variance, ...)."""
    heldout_rows: int = 20_000
    """Held-out samples (with their true feature activations) for the absorption metrics."""
    seed: int = 1_000_003
    """Seed of both held-out streams (harvest streams are seeded from corpus.seed and the group)."""
    batch_size: int = 4096
    """Rows per SAE forward."""
    own_cos: float = 0.5
    """Decoder cosine above which a latent can be a parent's own latent (absorbed-or-lost share)."""

    def __post_init__(self) -> None:
        for name in ("n_rows", "heldout_rows", "batch_size"):
            value = getattr(self, name)
            check(isinstance(value, int) and value > 0,
                  f"eval.options.synthetic.{name} must be a positive integer, got {value!r}")
        check(isinstance(self.own_cos, (int, float)) and 0.0 < self.own_cos < 1.0,
              f"eval.options.synthetic.own_cos must be a number in (0, 1), got {self.own_cos!r}")


def saelens_metrics(model, sae_folder, opts: SyntheticOptions) -> dict[str, float]:
    """SAELens's own synthetic-data eval of the exported SAE (loaded through SAELens)."""
    from sae_lens import SAE
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    sae = SAE.load_from_disk(str(sae_folder), device=str(model.device))
    with torch.random.fork_rng(devices=[]):  # its sampler draws from the global generator
        torch.manual_seed(opts.seed)
        res = eval_sae_on_synthetic_data(sae, model.feature_dict, model.activation_generator,
                                         num_samples=opts.n_rows, batch_size=opts.batch_size)
    c = res.classification
    return {"mcc": res.mcc, "uniqueness": res.uniqueness, "f1": c.f1_score, "precision": c.precision,
            "recall": c.recall, "explained_variance": res.explained_variance, "l0": res.sae_l0,
            "true_l0": res.true_l0, "dead_latents": float(res.dead_latents), "shrinkage": res.shrinkage}


@torch.no_grad()
def hierarchy_metrics(model, sae, acts_ND: torch.Tensor, feats_NF: torch.Tensor, batch_size: int, *,
                      own_cos: float = SyntheticOptions.own_cos) -> tuple[dict[str, float], torch.Tensor]:
    """Absorption metrics on held-out rows, and the mask of the matched latents of absorbed parents."""
    from eval.synthetic.metrics import (absorbed_parent_latents, carried_share, decoder_absorption,
                                        hierarchy_truth, parent_mass)

    truth = hierarchy_truth(model)
    codes_NM = torch.cat([sae.encode(x_BD.to(sae.device, sae.dtype)).float().cpu()
                          for x_BD in acts_ND.split(batch_size)])
    W_dec_MD = sae.W_dec.float().cpu()  # unit rows; the codes carry the decoder norms
    feats_NF = feats_NF.float()
    mass = parent_mass(truth, W_dec_MD, codes_NM, feats_NF, own_cos=own_cos)
    metrics = {**mass.summary(), **carried_share(truth, W_dec_MD, codes_NM, feats_NF).summary(),
               **decoder_absorption(truth, W_dec_MD).summary()}
    return metrics, absorbed_parent_latents(mass, W_dec_MD.shape[0])


def run(inputs: EvalInputs, opts: SyntheticOptions) -> EvalOutput:
    acts_ND, feats_NF = inputs.heldout
    metrics = saelens_metrics(inputs.model, inputs.sae_folder, opts)
    absorption, absorbed_M = hierarchy_metrics(inputs.model, inputs.sae, acts_ND, feats_NF, opts.batch_size,
                                               own_cos=opts.own_cos)
    metrics.update(absorption)
    history_path = inputs.sae_folder / HISTORY_FILE
    if history_path.is_file():
        metrics.update(detection_aucs(pd.read_parquet(history_path), absorbed_M.numpy()))
        metrics["n_absorbed_latents"] = float(absorbed_M.sum())
    return EvalOutput(metrics, {"absorbed_latents": torch.nonzero(absorbed_M).squeeze(1).tolist()})


SYNTHETIC = register(EvalSpec(
    "synthetic", "ground truth on a synthetic model: SAELens F1/MCC/EV + hierarchy absorption + detection AUCs",
    run, options=SyntheticOptions, model_kind="synthetic",
    heldout=lambda opts: (opts.heldout_rows, opts.seed)))
