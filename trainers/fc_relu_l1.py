"""``fc_relu_l1``: the seed's own setting, a ReLU + L1 SAE whose resampling is steered by the
tracker: high-absorption-score latents are split into dead slots first, and the dead latents the
splits left unused are resampled as in ``relu_l1``."""
from trainers.fc_guidance import with_fc_guidance
from trainers.recipe import register
from trainers.relu_l1 import RELU_L1

FC_RELU_L1 = register(with_fc_guidance(RELU_L1))
