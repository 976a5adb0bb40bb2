"""(e) The Prefect deployments: `prefect deploy --all` against a local `prefect server start`
registers both, and a backfill run executed by a process worker completes
(scripts/check_deployments.py, offline, about 30 s; also `make check-deployments`)."""

from __future__ import annotations

from sandbox_env import passes_check


def test_both_deployments_register_and_a_worker_completes_a_backfill_run():
    passes_check("check_deployments")
