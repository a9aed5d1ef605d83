"""Tools around a run that are not stages: carrying an SAE between machines through small files
(``sae_transfer``), moving a Gemma harvest to a machine without the model's wheels (``gemma_slice``),
and calibrating relu_l1's L1 weight to target L0s (``relu_l1_calibration``). Run each as
``python -m pipeline.tools.<name> --help``."""
