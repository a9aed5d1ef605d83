"""``fc_topk``: the method this project studies, a TopK SAE whose high-absorption-score latents are
split during training (trainers.fc_guidance)."""
from trainers.fc_guidance import with_fc_guidance
from trainers.recipe import register
from trainers.topk import TOPK

FC_TOPK = register(with_fc_guidance(TOPK))
