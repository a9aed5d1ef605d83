"""Serve the ``fc-sae`` deployments from this process (the runner ``make run`` starts).

Deployments: ``fc-sae/full`` (every stage) and ``fc-sae/eval`` (evaluation, aggregation and report
only, against the SAEs already in the run directory).  Both take ``preset`` and ``run_dir``.

    python -m flows.serve            # blocks; `make down` stops it

For machines beyond this one, deploy the same flow to a Prefect work pool instead
(``fc_sae.deploy(name=..., work_pool_name=...)``) and start workers there.
"""
from __future__ import annotations

import os

from prefect import serve

from flows.fc_sae_flow import fc_sae

DEFAULT_PRESET = os.environ.get("FC_SAE_PRESET", "demo")
DEFAULT_RUN_DIR = os.environ.get("FC_SAE_RUN_DIR", "runs/demo")


def deployments():
    params = {"preset": DEFAULT_PRESET, "run_dir": DEFAULT_RUN_DIR}
    flow = fc_sae
    if os.environ.get("FC_SAE_TASK_RUNNER") == "dask":
        from prefect_dask import DaskTaskRunner

        # Fan the eval tasks (and SAE training) out over a Dask cluster: a LocalCluster by default,
        # or an existing scheduler given by FC_SAE_DASK_ADDRESS (e.g. tcp://scheduler:8786).
        address = os.environ.get("FC_SAE_DASK_ADDRESS")
        flow = fc_sae.with_options(task_runner=DaskTaskRunner(address=address) if address else DaskTaskRunner())
    return [
        flow.to_deployment("full", parameters={**params, "stages": "full"},
                           description="harvest -> train -> evaluate -> aggregate -> report"),
        flow.to_deployment("eval", parameters={**params, "stages": "eval"},
                           description="evaluate -> aggregate -> report against existing SAEs"),
    ]


def main() -> None:
    serve(*deployments())


if __name__ == "__main__":
    main()
