"""SAE trainers, laid out by what a researcher changes:

- :mod:`trainers.saes`: the SAE architectures (TopK + AuxK, ReLU + L1, BatchTopK,
  Matryoshka-BatchTopK), one file each with its options and its recipe, on the shared base
  :mod:`trainers.saes.sae`;
- :mod:`trainers.fc`: the FC method: the FrequencyConsistencyTracker, FC-guided splitting,
  absorption repair, and :mod:`trainers.fc.recipes`, which registers every FC recipe and its
  random control;
- :mod:`trainers.training`: the machinery: the one loop, its config, the recipe contract and
  registry, checkpoints, export, activation sources, threshold calibration, latent surgery and
  dead-latent resampling;
- :mod:`trainers.reference`: other implementations trained on the same data (SAELens).

The registry (:mod:`trainers.training.registry`) is imported on the first recipe lookup
(``trainers.training.recipe.get_recipe`` / ``recipe_names``), so it is complete wherever a recipe
is looked up, and importing a config stays free of torch.
"""
