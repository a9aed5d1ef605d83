"""``random_split_relu_l1``: the control arm of ``fc_relu_l1``: the same split events and surgery on
randomly chosen latents, then the same resampling of the dead latents left over."""
from trainers.fc_guidance import with_fc_guidance
from trainers.recipe import register
from trainers.relu_l1 import RELU_L1

RANDOM_SPLIT_RELU_L1 = register(with_fc_guidance(RELU_L1, control=True))
