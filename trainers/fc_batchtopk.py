"""``fc_batchtopk``: BatchTopK with FC-guided splitting (trainers.fc_guidance), and its control arm
``random_split_batchtopk`` (the same split events on randomly chosen latents)."""
from trainers.batchtopk import BATCHTOPK
from trainers.fc_guidance import with_fc_guidance
from trainers.recipe import register

FC_BATCHTOPK = register(with_fc_guidance(BATCHTOPK))
RANDOM_SPLIT_BATCHTOPK = register(with_fc_guidance(BATCHTOPK, control=True))
