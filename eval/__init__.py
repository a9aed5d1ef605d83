"""fc-sae evaluation: SAE-Bench adapters, the long results table, analysis plots.

Evals are plug-ins (:mod:`eval.spec`): each eval module registers an ``EvalSpec`` and
:mod:`eval.registry` imports them all. Nothing here imports ``pipeline`` or ``flows``: the model and
datasets are passed in by ``pipeline.evaluate``.

- :mod:`eval.sae` loads a trained SAE folder as an SAE-Bench custom SAE (the project's encoding rule).
- :mod:`eval.absorption`, :mod:`eval.core`, :mod:`eval.sae_probes` run sae-bench's offline evals with
  their shared artifacts under ``run_dir/eval_artifacts``; :mod:`eval.network_evals` decides in
  seconds whether the Hub/API evals can run and runs them where they can.
- :mod:`eval.results` writes and reads ``run_dir/results.parquet`` (``load``, ``pivot``, ``print_table``).
- :mod:`eval.plots` draws the report's figures.

The stage functions live in :mod:`pipeline.evaluate` (``evaluate``, ``run_eval_task``, ``aggregate``)
and :mod:`pipeline.report` (``report``).
"""
import fc_base  # noqa: F401  (sets the Hugging Face cache and offline environment first)
