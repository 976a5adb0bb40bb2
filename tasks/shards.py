"""Extract shards as Prefect deployment runs (BILLING_SHARDS > 1): start, watch, load.

The daily run packs its billable partners into shards (`stages.plan_shards`), starts one run of
the `extract-shard` deployment per shard (a subflow of its `extract-shards` task in the UI; a
worker of the `bullphish-shards` pool runs it, on any host that reaches BullPhish ID and the
staging storage), waits for them, and loads what they staged (`stages.load_shards`). A shard run
that ends Failed, Crashed or Cancelled, that does not end within BILLING_SHARD_TIMEOUT_S, or whose
sign of life stops moving for BILLING_SHARD_SILENCE_S while Prefect still shows it running (its
host or worker died: nobody will report it), has its partners failed with a reason naming it;
the next run bills them.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling, Crashed

from bullphish_billing import stages, staging, stopping
from bullphish_billing.errors import ConfigurationError
from bullphish_billing.extract import ExtractResult
from bullphish_billing.run_context import RunContext
from bullphish_billing.shards import Shard, ShardRun

SHARD_DEPLOYMENT = "extract-shard/extract-shard"
POLL_S = 1.0


def require_shard_deployment(shards: int) -> None:
    """ConfigurationError unless the extract-shard deployment is registered (before any work)."""
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(SHARD_DEPLOYMENT)
    except ObjectNotFound:
        raise ConfigurationError(
            f"BILLING_SHARDS={shards} needs the {SHARD_DEPLOYMENT} deployment on this Prefect "
            "server: run `prefect deploy --all` in the checkout and start a worker on the "
            'bullphish-shards pool (README "Scaling out"), or unset BILLING_SHARDS'
        ) from None


@dataclass
class _Watched:
    """A shard's run as the daily run watches it."""

    shard: Shard
    flow_run: FlowRun
    location: staging.ShardLocation
    life: str | None = None
    life_changed: float = field(default_factory=time.monotonic)
    was_running: bool = False
    outcome: ShardRun | None = None


@task(name="extract-shards", task_run_name="extract-shards-{usage_date}", cache_policy=NO_CACHE)
def extract_in_shards(
    ctx: RunContext,
    usage_date: dt.date,
    partner_ids: list[str],
    left_to_others: Mapping[str, str] | None = None,
) -> dict[str, ExtractResult]:
    """Extract the partners in BILLING_SHARDS extract-shard runs, then load what they staged;
    the result per partner as `stages.extract` returns it. Not retried as a task: each shard
    run is started once per daily run (its idempotency key), and a failed shard's partners are
    the next run's."""
    log = get_run_logger()
    planned = stages.plan_shards(ctx, usage_date, partner_ids)
    watched = [_start(ctx, usage_date, shard) for shard in planned]
    for w in watched:
        log.info(
            "shard %d: %d partners (%d targets last time), %d connections: flow run %s",
            w.shard.number,
            len(w.shard.partner_ids),
            w.shard.weight,
            w.shard.max_connections,
            w.flow_run.name,
        )
    _wait(ctx, watched)
    outcomes = [w.outcome for w in watched if w.outcome is not None]
    for outcome in outcomes:
        if outcome.failure:
            log.error("%s", outcome.reason(outcome.failure))
    started = time.monotonic()
    results = stages.load_shards(ctx, usage_date, outcomes, left_to_others)
    log.info(
        "checked and loaded what %d of %d shard(s) staged in %.2f s",
        sum(o.failure is None for o in outcomes),
        len(outcomes),
        time.monotonic() - started,
    )
    return results


def _start(ctx: RunContext, usage_date: dt.date, shard: Shard) -> _Watched:
    flow_run = run_deployment(
        SHARD_DEPLOYMENT,
        parameters={
            "usage_date": usage_date.isoformat(),
            "partner_ids": list(shard.partner_ids),
            "run_id": ctx.run_id,
            "shard": shard.number,
            "max_connections": shard.max_connections,
            "deadline_s": max(1.0, ctx.clock.left()),
        },
        flow_run_name=f"extract-shard-{usage_date.isoformat()}-{shard.number}",
        timeout=0,
        idempotency_key=f"{ctx.run_id}-shard-{shard.number}",
    )
    location = staging.shard_location(
        ctx.settings.staging_location, usage_date, ctx.run_id, shard.number
    )
    return _Watched(shard, flow_run, location)


def _wait(ctx: RunContext, watched: list[_Watched]) -> None:
    """Poll the shard runs until each has an outcome: its final state, or given up on (too
    long, gone silent, or this run asked to stop), in which case its run is ended in Prefect
    too (Cancelled, or Crashed when silent) so that no worker goes on with it."""
    limit = min(ctx.settings.shard_timeout_s, max(0.0, ctx.clock.left()))
    deadline = time.monotonic() + limit
    with get_client(sync_client=True) as client:
        while True:
            now = time.monotonic()
            for w in (w for w in watched if w.outcome is None):
                run = client.read_flow_run(w.flow_run.id)
                state = run.state
                if state is not None and state.is_final():
                    failure = None
                    if not state.is_completed():
                        failure = f"ended {state.name}: {state.message or 'no message'}"
                    w.outcome = ShardRun(w.shard, run.name, failure)
                    continue
                why = _why_give_up(ctx, w, run, now, deadline, limit)
                if why is not None:
                    _give_up(client, w, run, *why)
            if all(w.outcome is not None for w in watched):
                return
            time.sleep(POLL_S)


def _why_give_up(
    ctx: RunContext, w: _Watched, run: FlowRun, now: float, deadline: float, limit: float
) -> tuple[str, bool] | None:
    """Why to give up on a shard run that has not ended (and whether it is taken for dead),
    or None to wait on. Silence counts from the last change of its sign of life seen while it
    runs (a run waiting for a worker, or its process starting, has no sign of life yet)."""
    s = ctx.settings
    running = run.state is not None and run.state.is_running()
    life = staging.sign_of_life(w.location)
    if life != w.life or not (running and w.was_running):
        w.life, w.life_changed = life, now
    w.was_running = running
    if stopping.stopping():
        return "was cancelled: the daily run was asked to stop", False
    if now >= deadline:
        return (
            f"did not finish within {limit:.0f} s "
            f"(BILLING_SHARD_TIMEOUT_S={s.shard_timeout_s:g}, or the run's deadline)",
            False,
        )
    if running and now - w.life_changed > s.shard_silence_s:
        return (
            f"went silent: no sign of life for {now - w.life_changed:.0f} s while running "
            f"(BILLING_SHARD_SILENCE_S={s.shard_silence_s:g}; its host or worker died?)",
            True,
        )
    return None


def _give_up(client, w: _Watched, run: FlowRun, why: str, crashed: bool = False) -> None:
    """End a shard run given up on: Crashed when it went silent (nobody runs it any more),
    Cancelling when it runs (its worker stops it), Cancelled before it started."""
    if crashed:
        state = Crashed(message=why)
    elif run.state is not None and run.state.is_running():
        state = Cancelling(message=why)
    else:
        state = Cancelled(message=why)
    try:
        client.set_flow_run_state(run.id, state, force=True)
    except Exception:  # noqa: BLE001 - its partners are failed either way
        get_run_logger().warning("could not mark shard run %s ended", run.name)
    w.outcome = ShardRun(w.shard, run.name, why)
