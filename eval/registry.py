"""Every eval, registered by importing its module: a new eval is one file plus one import line here.
Look evals up with ``eval.spec.get_eval`` / ``eval_names``."""
import eval.absorption  # noqa: F401  (one line per eval module, in the order help lists them)
import eval.core  # noqa: F401
import eval.sae_probes  # noqa: F401
import eval.network_evals  # noqa: F401
import eval.synthetic  # noqa: F401
