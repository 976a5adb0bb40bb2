"""Extract shards staged as Parquet and loaded by the one writer (staging.py, shards.py), against
the faulty sandbox over loopback: two shards staged and loaded leave the warehouse exactly as an
in-process extract of the same partners does; a manifest that does not match its files, or no
manifest, fails the shard's partners by name and loads the others. No Prefect here: the
extract-shard flow and the orchestration are tested in test_scale_out.py.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import duckdb
import pytest

from bullphish_billing import shards, stages, staging
from bullphish_billing.dates import yesterday_utc
from bullphish_billing.lease import RunLeases
from bullphish_billing.results import Decision
from bullphish_billing.run_context import RunContext
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig
from bullphish_billing.settings import load_settings
from bullphish_billing.shards import ShardRun

FAULTY = SandboxConfig(
    seed=23, partners=9, short_pages=True, rate_429=0.1, rate_5xx=0.1, malformed_rate=0.02
)
DAY = yesterday_utc() - dt.timedelta(days=1)

# what an extract leaves, without the run's id and clock
TABLES = {
    "raw.organizations": "* EXCLUDE (run_id)",
    "raw.targets": "* EXCLUDE (run_id)",
    "ops.extractions": "* EXCLUDE (run_id, extracted_at)",
    "ops.quarantine": "* EXCLUDE (run_id, recorded_at)",
    "ops.normalized_values": "* EXCLUDE (run_id, recorded_at)",
}


def context(run_id: str, **overrides: object) -> RunContext:
    settings = load_settings(**overrides)
    return RunContext.start(settings, run_id, RunLeases(settings.warehouse, run_id))


def sharded(run_id: str, tmp_path: Path, shards: int = 2, **overrides: object) -> RunContext:
    """A run's context with its own warehouse and staging under `tmp_path`."""
    settings = {
        "BILLING_WAREHOUSE": tmp_path / f"{run_id}.duckdb",
        "BILLING_STAGING_URL": str(tmp_path / "st"),
        "BILLING_SHARDS": shards,
    }
    return context(run_id, **(settings | overrides))


def contents(path: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return {
            table: sorted(con.execute(f"SELECT {cols} FROM {table}").fetchall(), key=repr)
            for table, cols in TABLES.items()
        }


@pytest.fixture(scope="module")
def sandbox() -> RunningSandbox:
    with RunningSandbox(FAULTY) as running:
        yield running


def billable(ctx: RunContext) -> list[str]:
    stages.start(ctx, DAY, dry_run=True)
    return sorted(
        d.partner_id for d in stages.list_partners(ctx, DAY) if d.decision == Decision.BILLABLE
    )


def staged_run(ctx: RunContext, partners: list[str], k: int) -> list[ShardRun]:
    """Stage `partners` in `k` shards of the run (each shard in its own context, as a shard
    run on another host would be), and return the shard runs as the orchestrator sees them."""
    planned = stages.plan_shards(ctx, DAY, partners)
    assert len(planned) == k
    for shard in planned:
        shard_ctx = context(
            f"shard-run-{shard.number}",
            BILLING_MAX_CONNECTIONS=shard.max_connections,
            BILLING_STAGING_URL=ctx.settings.staging_location,
        )
        stages.extract_shard(
            shard_ctx, DAY, list(shard.partner_ids), run_id=ctx.run_id, shard=shard.number
        )
    return [ShardRun(shard, f"shard-run-{shard.number}") for shard in planned]


def test_two_staged_shards_load_exactly_what_an_in_process_extract_writes(
    sandbox, configure, tmp_path
):
    configure(sandbox)
    in_process = context("in-process", BILLING_WAREHOUSE=tmp_path / "a.duckdb")
    partners = billable(in_process)
    assert len(partners) >= 4
    results = stages.extract(in_process, DAY, partners)

    ctx = sharded("sharded", tmp_path)
    assert billable(ctx) == partners
    runs = staged_run(ctx, partners, 2)
    assert sorted(p for r in runs for p in r.shard.partner_ids) == partners
    loaded = stages.load_shards(ctx, DAY, runs)

    assert loaded == results
    a, b = contents(tmp_path / "a.duckdb"), contents(tmp_path / "sharded.duckdb")
    assert a["raw.targets"], "the sandbox serves targets"
    assert a["ops.quarantine"], "the faulty sandbox serves bad records"
    assert a == b
    assert not list((tmp_path / "st").rglob("*.parquet")), "loaded files are removed"

    # loading a new staging of the same date replaces the snapshots, as a re-extract does
    again = staged_run(ctx, partners, 2)
    stages.load_shards(ctx, DAY, again)
    assert contents(tmp_path / "sharded.duckdb") == a


def test_a_shard_without_a_usable_manifest_fails_its_partners_by_name_and_the_rest_load(
    sandbox, configure, tmp_path
):
    configure(sandbox)
    ctx = sharded("broken", tmp_path, 3, BILLING_STAGING_KEEP_DAYS=2)
    partners = billable(ctx)
    runs = staged_run(ctx, partners, 3)
    root = tmp_path / "st" / DAY.isoformat() / "broken"
    # shard 0: a file changed after it was staged; shard 1: no manifest; shard 2: as staged
    victim = next((root / "shard-0").glob("part-00000-targets.parquet"))
    data = bytearray(victim.read_bytes())
    data[-12] ^= 0xFF  # in the footer: Parquet readers would refuse it, the checksum first
    victim.write_bytes(bytes(data))
    (root / "shard-1" / staging.MANIFEST).unlink()

    results = stages.load_shards(ctx, DAY, runs)

    assert set(results) == set(partners)
    for run in runs[:2]:
        for p in run.shard.partner_ids:
            assert results[p].error.startswith(
                f"extract shard {run.shard.number} (flow run {run.run_name}) staged no usable "
            ), results[p].error
    assert "part-00000-targets.parquet" in results[runs[0].shard.partner_ids[0]].error
    assert "no manifest.json" in results[runs[1].shard.partner_ids[0]].error
    with duckdb.connect(str(tmp_path / "broken.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT partner_id FROM ops.extractions").fetchall()
        extracted = {p for (p,) in rows}
    assert extracted == {p for p in runs[2].shard.partner_ids if not results[p].error}
    assert (root / "shard-2" / staging.MANIFEST).exists(), "BILLING_STAGING_KEEP_DAYS keeps them"


def test_a_failed_shard_run_fails_its_partners_with_the_run_named(sandbox, configure, tmp_path):
    configure(sandbox)
    ctx = sharded("crashed", tmp_path)
    partners = billable(ctx)
    runs = staged_run(ctx, partners, 2)
    runs[1] = ShardRun(runs[1].shard, "brave-otter", failure="crashed: the worker died")
    results = stages.load_shards(ctx, DAY, runs)
    for p in runs[1].shard.partner_ids:
        assert results[p].error == (
            "extract shard 1 (flow run brave-otter) crashed: the worker died"
        )
    assert set(results) == set(partners)
    for p in runs[0].shard.partner_ids:  # the other shard's partners are its own results
        assert not (results[p].error or "").startswith("extract shard"), results[p].error


def test_staging_works_on_any_fsspec_file_system(sandbox, configure, tmp_path):
    """memory:// stands for s3:// or gs://: DuckDB reads the files through fsspec."""
    configure(sandbox)
    ctx = sharded("memory", tmp_path, BILLING_STAGING_URL="memory://staging")
    partners = billable(ctx)
    runs = staged_run(ctx, partners, 2)
    results = stages.load_shards(ctx, DAY, runs)
    with duckdb.connect(str(tmp_path / "memory.duckdb"), read_only=True) as con:
        n = con.execute("SELECT count(*) FROM ops.extractions").fetchone()[0]
    assert n == sum(not r.error for r in results.values()) > 0


def test_prune_removes_shards_judged_before_the_days_kept_and_never_one_at_work(tmp_path):
    """A backfill stages old usage dates today, and its dates run side by side: what is pruned
    is decided by when the run judged the shard, and a shard not yet judged is never touched."""
    today = dt.date(2026, 12, 3)
    fs, _ = staging.staging_root(str(tmp_path))
    judged = {}
    for n in range(4):  # usage dates long ago, judged 0..3 days ago
        location = staging.shard_location(str(tmp_path), dt.date(2026, 1, 1), f"run{n}", 0)
        fs.makedirs(location.root)
        staging.mark_judged(location, today - dt.timedelta(days=n))
        judged[n] = location.root
    at_work = staging.shard_location(str(tmp_path), dt.date(2025, 1, 1), "busy", 1)
    fs.makedirs(at_work.root)

    removed = staging.prune(str(tmp_path), 2, today)

    assert removed == [judged[3]]
    assert all(fs.exists(judged[n]) for n in range(3))
    assert fs.exists(at_work.root)


# -- packing (plain) ---------------------------------------------------------------------------
def test_pack_balances_partners_by_their_last_size():
    sizes = {"a": 100, "b": 60, "c": 50, "d": 10}
    packed = shards.pack(["a", "b", "c", "d"], 2, sizes, max_connections=8)
    assert [s.partner_ids for s in packed] == [("a", "d"), ("b", "c")]
    assert [s.weight for s in packed] == [110, 110]
    assert [s.max_connections for s in packed] == [4, 4]


def test_pack_without_history_deals_round_robin_and_never_makes_an_empty_shard():
    packed = shards.pack(["p1", "p2", "p3", "p4", "p5"], 2, {}, max_connections=8)
    assert [s.partner_ids for s in packed] == [("p1", "p3", "p5"), ("p2", "p4")]
    assert len(shards.pack(["p1"], 4, {}, max_connections=8)) == 1
    assert [s.max_connections for s in shards.pack(["p1", "p2", "p3"], 8, {}, 2)] == [1, 1]


@pytest.mark.usefixtures("prefect_harness")
def test_shards_without_the_extract_shard_deployment_end_the_run_at_start(
    sandbox, configure, tmp_path
):
    """BILLING_SHARDS > 1 on a Prefect server that lacks the deployment: one line, before any
    partner is extracted or anything sent."""
    from flows.daily_billing import daily_billing

    configure(sandbox, BILLING_SHARDS=2, BILLING_STAGING_URL=str(tmp_path / "st"))
    sent = len(sandbox.kaseyaone.sends())
    state = daily_billing(usage_date=DAY, return_state=True)
    assert state.is_failed()
    assert state.message.startswith(
        "BILLING_SHARDS=2 needs the extract-shard/extract-shard deployment on this Prefect server"
    ), state.message
    assert len(sandbox.kaseyaone.sends()) == sent
    assert not (tmp_path / "st").exists()
    warehouse = tmp_path / "warehouse.duckdb"
    if warehouse.exists():
        with duckdb.connect(str(warehouse), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM ops.runs").fetchone()[0] == 0


@pytest.mark.usefixtures("prefect_harness")
def test_a_shard_no_worker_takes_is_given_up_after_the_timeout_and_its_partners_failed(
    sandbox, configure, tmp_path
):
    """The extract-shard deployment exists but no worker serves its pool: after
    BILLING_SHARD_TIMEOUT_S the run cancels the shard runs, fails their partners naming each
    run, and goes on (exit 1, nothing extracted, nothing staged left behind)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.daily_billing import daily_billing
    from flows.extract_shard import extract_shard

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="bullphish-shards", type="process"))
    deployment = extract_shard.to_deployment(
        name="extract-shard", work_pool_name="bullphish-shards"
    )
    deployment.apply()

    configure(
        sandbox,
        BILLING_SHARDS=2,
        BILLING_STAGING_URL=str(tmp_path / "st"),
        BILLING_SHARD_TIMEOUT_S=3,
    )
    state = daily_billing(usage_date=DAY, return_state=True)
    summary = state.result(raise_on_failure=False)
    assert state.is_failed() and summary.exit_code == 1
    failed = {o.partner_id: o.reason for o in summary.outcomes if o.status == "failed"}
    billable = {o.partner_id for o in summary.outcomes if o.status != "skipped"}
    assert failed and set(failed) == billable
    for reason in failed.values():
        assert re.fullmatch(
            r"extract shard [01] \(flow run extract-shard-\S+-[01]\) did not finish within 3 s "
            r"\(BILLING_SHARD_TIMEOUT_S=3, or the run's deadline\)",
            reason,
        ), reason
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    mine = f"extract-shard-{DAY.isoformat()}-"
    shard_states = {r.name: r.state.type.value for r in runs if r.name.startswith(mine)}
    assert set(shard_states.values()) == {"CANCELLED"}, shard_states
