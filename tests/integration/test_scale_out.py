"""Extract shards on Prefect workers (scripts/check_scale_out.py, also `make check-scale-out`):
a `prefect server start`, two process workers on the bullphish-shards pool, a faulty sandbox;
BILLING_SHARDS=2 bills exactly what BILLING_SHARDS=1 and the oracle do, each worker runs a
shard, every batch is applied once; a shard whose host dies mid-extract has its partners
failed by name, and a backfill of the date (sharded) delivers them, once. About 2 minutes."""

from __future__ import annotations

from sandbox_env import passes_check


def test_two_shards_on_two_workers_bill_what_one_process_does_and_survive_a_dead_host():
    passes_check("check_scale_out")
