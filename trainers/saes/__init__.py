"""SAE architectures: one file per architecture, holding its module, its option groups and its
recipe; :mod:`trainers.saes.sae` is the base they share. Nothing here knows the FC method."""
