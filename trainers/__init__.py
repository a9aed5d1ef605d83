"""fc-sae trainers."""
import pipeline  # noqa: F401  (sets the Hugging Face cache and offline environment first)
