"""``random_split_topk``: the control arm of ``fc_topk``: the same split events and surgery on
randomly chosen latents (trainers.fc_guidance). A gain of fc_topk over it is the statistic's."""
from trainers.fc_guidance import with_fc_guidance
from trainers.recipe import register
from trainers.topk import TOPK

RANDOM_SPLIT_TOPK = register(with_fc_guidance(TOPK, control=True))
