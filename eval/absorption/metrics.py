"""Names of sae-bench's absorption metrics and its letters, shared by the eval, the k-sparse scoring, the
comparisons and the plots (no torch import)."""

LETTERS = "abcdefghijklmnopqrstuvwxyz"
"""sae-bench's LETTERS: the first letters it probes, in its order."""

SUMMARY_METRICS = ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features")
"""sae-bench's summary metrics: the mean over the letters used of each per-letter metric below."""
LETTER_METRICS = ("absorption_fraction", "full_absorption_rate", "num_split_features")
"""The per-letter metrics, stored as ``letter/<x>/<name>`` rows."""
LETTER_METRIC_OF = dict(zip(SUMMARY_METRICS, LETTER_METRICS))
"""Summary metric -> its per-letter metric."""
