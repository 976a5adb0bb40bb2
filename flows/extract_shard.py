"""The extract-shard flow: one shard of a daily run's extraction, on a shard host (scale-out).

The daily run (BILLING_SHARDS > 1) starts one run of the `extract-shard` deployment per shard
(tasks/shards.py). Each extracts its partners exactly as the daily run would
(`stages.extract_shard`: the same clients, validation and quarantine), into Parquet files under
BILLING_STAGING_URL with a manifest written last, and never opens the warehouse: the daily run,
the one writer, loads what it staged.
"""

from __future__ import annotations

import datetime as dt
import uuid

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed, State

from bullphish_billing import stages
from bullphish_billing.errors import UserError
from bullphish_billing.lease import RunLeases
from bullphish_billing.run_context import RunContext
from bullphish_billing.settings import load_settings


@flow(name="extract-shard", flow_run_name="extract-shard-{usage_date}-{shard}", log_prints=False)
def extract_shard(
    usage_date: dt.date,
    partner_ids: list[str],
    run_id: str,
    shard: int,
    max_connections: int,
    deadline_s: float | None = None,
) -> dict[str, int] | State:
    """Extract shard `shard` of daily run `run_id`: `partner_ids` for `usage_date`, with at most
    `max_connections` connections to BullPhish ID (the shard's share of
    BILLING_MAX_CONNECTIONS) and no request past `deadline_s` seconds from now (what was left of
    the daily run's deadline). Configuration comes from this host's environment, as for the
    daily run; the run ends Failed only when it staged nothing (bad configuration, staging
    storage unreachable): a partner whose extract failed is in the manifest, for the daily run
    to report."""
    log = get_run_logger()
    shard_run_id = str(flow_run.get_id() or uuid.uuid4())
    try:
        settings = load_settings()
        bounds = {"max_connections": min(max_connections, settings.max_connections)}
        if deadline_s is not None:
            bounds["run_deadline_s"] = max(1.0, min(deadline_s, settings.run_deadline_s))
        settings = settings.model_copy(update=bounds)
        # a shard takes no lease: the daily run holds its partner-dates
        ctx = RunContext.start(settings, shard_run_id, RunLeases(settings.warehouse, shard_run_id))
        manifest = stages.extract_shard(ctx, usage_date, partner_ids, run_id=run_id, shard=shard)
    except UserError as exc:
        log.error("%s", exc)
        return Failed(message=str(exc), data=exc)
    failed = sum(bool(r.error) for r in manifest.results.values())
    staged = {
        "partners": len(manifest.results),
        "failed": failed,
        "files": len(manifest.files),
        "rows": sum(f.rows for f in manifest.files),
        "bytes": sum(f.bytes for f in manifest.files),
    }
    log.info(
        "shard %d of %s for %s: %d partners staged (%d failed), %d files, %d rows, %.1f MB",
        shard,
        run_id,
        usage_date,
        staged["partners"],
        failed,
        staged["files"],
        staged["rows"],
        staged["bytes"] / 1e6,
    )
    return staged
