"""fc-sae evaluation: SAE-Bench adapters, one folder per eval, and the long results table.

Evals are plug-ins (:mod:`eval.spec`): each eval module registers an ``EvalSpec`` and
:mod:`eval.registry` imports them all. Nothing here imports ``pipeline`` or ``flows``: the model and
datasets are passed in by ``pipeline.evaluate``.

- :mod:`eval.sae` loads a trained SAE folder as an SAE-Bench custom SAE (the project's encoding rule).
- One folder per eval, SAE-Bench's layout: ``absorption/``, ``core/``, ``sae_probes/`` run sae-bench's
  offline evals with their shared artifacts under ``run_dir/eval_artifacts``; ``network/`` decides in
  seconds whether the Hub/API evals can run and runs them where they can; ``synthetic/`` scores SAEs
  of a synthetic model against its ground truth. Each folder's ``main`` module registers the eval.
- What the evals share: :mod:`eval.spec` (the plug-in contract), :mod:`eval.config`,
  :mod:`eval.runtime` (stopped forwards, locks, private generators), :mod:`eval.detection` (tracker
  statistics against the latents an eval identified), :mod:`eval.random_sae`.
- :mod:`eval.results` writes and reads ``run_dir/results.parquet`` (``load``, ``pivot``, ``print_table``).

The analysis of the table (comparisons, headline, plots, report) lives in :mod:`pipeline.analysis`. The
stage functions live in :mod:`pipeline.evaluate` (``evaluate``, ``run_eval_task``, ``aggregate``).
"""
import fc_base  # noqa: F401  (sets the Hugging Face cache and offline environment first)
