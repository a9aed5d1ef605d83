"""``fc_batchtopk``: BatchTopK with FC-guided splitting (trainers.fc_guidance)."""
from trainers.batchtopk import BATCHTOPK
from trainers.fc_guidance import with_fc_guidance
from trainers.recipe import register

FC_BATCHTOPK = register(with_fc_guidance(BATCHTOPK))
