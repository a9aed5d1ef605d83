"""The training machinery: the one loop (:mod:`trainers.training.loop`), its config, the recipe
contract and registry, checkpoints, export, activation sources, threshold calibration, and the
tools a maintenance hook rewrites latents with (surgery, dead-latent resampling). It names no
architecture and no FC rule: recipes are looked up in the registry."""
