"""(e) The Prefect deployments: `prefect deploy --all` against a local `prefect server start`
registers both, and a backfill run executed by a process worker completes
(scripts/check_deployments.py, offline, about 30 s; also `make check-deployments`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_deployments.py"


def test_both_deployments_register_and_a_worker_completes_a_backfill_run():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "check-deployments: verdict: PASS" in result.stdout, out
    assert "FAIL" not in result.stdout, out
