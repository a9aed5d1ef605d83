"""``fc_matryoshka``: Matryoshka-BatchTopK with FC-guided splitting (trainers.fc_guidance), and its
control arm ``random_split_matryoshka`` (the same split events on randomly chosen latents)."""
from trainers.fc_guidance import with_fc_guidance
from trainers.matryoshka import MATRYOSHKA
from trainers.recipe import register

FC_MATRYOSHKA = register(with_fc_guidance(MATRYOSHKA))
RANDOM_SPLIT_MATRYOSHKA = register(with_fc_guidance(MATRYOSHKA, control=True))
