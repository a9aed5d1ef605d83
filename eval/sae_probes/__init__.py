"""SAE-Bench's ``sparse_probing_sae_probes`` eval (``main``)."""
