"""The ground-truth eval of SAEs trained on a synthetic model: the eval and its options (``main``) and
the hierarchy absorption scores (``metrics``)."""
