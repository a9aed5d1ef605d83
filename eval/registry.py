"""Every eval, registered by importing its module: a new eval is one folder (its ``main`` module registers it) plus one import line here.
Look evals up with ``eval.spec.get_eval`` / ``eval_names``."""
import eval.absorption.main  # noqa: F401  (one line per eval module, in the order help lists them)
import eval.core.main  # noqa: F401
import eval.sae_probes.main  # noqa: F401
import eval.network.main  # noqa: F401
import eval.synthetic.main  # noqa: F401
