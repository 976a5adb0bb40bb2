"""Extract shards on Prefect workers (scripts/check_scale_out.py, also `make check-scale-out`):
a `prefect server start`, two process workers on the bullphish-shards pool, a faulty sandbox;
BILLING_SHARDS=2 bills exactly what BILLING_SHARDS=1 and the oracle do, each worker runs a
shard, every batch is applied once; a shard whose host dies mid-extract has its partners
failed by name, and the next run delivers them, once. About two minutes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_scale_out.py"


def test_two_shards_on_two_workers_bill_what_one_process_does_and_survive_a_dead_host():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "check-scale-out: verdict: PASS" in result.stdout, out
    assert "FAIL" not in result.stdout, out
