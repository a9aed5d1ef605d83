"""SAE-Bench's first-letter absorption eval: the eval and its options (``main``), the metric and letter
names shared with the analysis (``metrics``, no torch import), and the vectorised k-sparse scoring
(``k_sparse``)."""
