"""Every recipe of the FC method and its random-surgery control, registered here.

- ``fc_<base>`` / ``random_split_<base>`` for each architecture: FC-guided splitting
  (trainers.fc.guidance) and the same surgery on random latents;
- the FC v2 recipes on TopK, absorption repair driven by the hole statistics (trainers.fc.repair):
  ``fc2_topk`` (mode ``decoder``: the absorbing child's decoder loses the parent direction; both
  encoders re-fit), ``fc2enc_topk`` (mode ``encoder``: only the parent's encoder is re-fit),
  ``fc2sup_topk`` (mode ``decoder``, parents flagged by encoder suppression instead of the hole
  score), and the controls ``random_repair_topk`` / ``random_repair_enc_topk`` (the decoder / encoder
  mode on randomly flagged parents).

Each architecture is imported just before its arms: registering it and then them keeps the order
``fc-sae train --help`` lists recipes in, which is also the order of the option sections in every
saved config (an architecture's sections, then ``fc``).
"""
from __future__ import annotations

from trainers.fc.guidance import with_fc_guidance
from trainers.fc.repair import REPAIRS, FC2Options, repair_maintain
from trainers.training.recipe import Recipe, register

from trainers.saes.topk import TOPK  # noqa: E402  (each architecture right before its arms)

FC_TOPK = register(with_fc_guidance(TOPK))
RANDOM_SPLIT_TOPK = register(with_fc_guidance(TOPK, control=True))

from trainers.saes.relu_l1 import RELU_L1  # noqa: E402

# fc_relu_l1 is the seed's own setting: tracker-steered resampling of a ReLU + L1 SAE (the splits
# take dead slots first; the dead latents they left unused are resampled as in relu_l1).
FC_RELU_L1 = register(with_fc_guidance(RELU_L1))
RANDOM_SPLIT_RELU_L1 = register(with_fc_guidance(RELU_L1, control=True))

from trainers.saes.batchtopk import BATCHTOPK  # noqa: E402

FC_BATCHTOPK = register(with_fc_guidance(BATCHTOPK))
RANDOM_SPLIT_BATCHTOPK = register(with_fc_guidance(BATCHTOPK, control=True))

from trainers.saes.matryoshka import MATRYOSHKA  # noqa: E402

FC_MATRYOSHKA = register(with_fc_guidance(MATRYOSHKA))
RANDOM_SPLIT_MATRYOSHKA = register(with_fc_guidance(MATRYOSHKA, control=True))


def _repair_recipe(name: str, description: str, mode: str, control: bool = False,
                   statistic: str = "hole_score") -> Recipe:
    # Each repair mode has its control: the same surgery on randomly flagged parents.
    control_arm = None if control else {"decoder": "random_repair_topk", "encoder": "random_repair_enc_topk"}[mode]
    return Recipe(name, description, TOPK.build, options=(*TOPK.options, FC2Options),
                  maintain=repair_maintain(mode, control, statistic), control=control_arm,
                  events=(REPAIRS.name,))


FC2_TOPK = register(_repair_recipe(
    "fc2_topk", "TopK + absorption repair: the absorbing child's decoder loses the parent direction", "decoder"))
FC2ENC_TOPK = register(_repair_recipe(
    "fc2enc_topk", "TopK + absorption repair: the flagged parent's encoder is re-fit", "encoder"))
FC2SUP_TOPK = register(_repair_recipe(
    "fc2sup_topk", "TopK + absorption repair on parents flagged by encoder suppression", "decoder",
    statistic="encoder_suppression"))
RANDOM_REPAIR_TOPK = register(_repair_recipe(
    "random_repair_topk", "TopK + fc2_topk's repair on randomly flagged latents (control)", "decoder", control=True))
RANDOM_REPAIR_ENC_TOPK = register(_repair_recipe(
    "random_repair_enc_topk", "TopK + fc2enc_topk's repair on randomly flagged latents (control)", "encoder",
    control=True))
