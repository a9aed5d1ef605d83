"""Analysis of the results table, in one place: paired comparisons at equal L0 (``compare``), the
headline metrics with their directions and noise (``headline``), the figures (``plots``), a run's HTML
report (``report``) and RESULTS.md across studies (``results_md``).

Everything here reads ``results.parquet`` and the SAE folders' training artifacts; nothing trains or
evaluates. The evals write the table (:mod:`eval.results`); the stage functions call
:func:`pipeline.analysis.report.report`."""
