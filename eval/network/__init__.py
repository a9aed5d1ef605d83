"""SAE-Bench's evals whose data or API live on the network (``main``): scr, tpp, sparse_probing,
autointerp, unlearning, ravel."""
