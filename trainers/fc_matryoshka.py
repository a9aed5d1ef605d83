"""``fc_matryoshka``: Matryoshka-BatchTopK with FC-guided splitting (trainers.fc_guidance)."""
from trainers.fc_guidance import with_fc_guidance
from trainers.matryoshka import MATRYOSHKA
from trainers.recipe import register

FC_MATRYOSHKA = register(with_fc_guidance(MATRYOSHKA))
