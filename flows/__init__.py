"""fc-sae."""
