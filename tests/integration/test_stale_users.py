"""Stale active users and date-times that name no real day, end to end: a daily run against
a faulty sandbox under Prefect's test harness. Expectations come from the sandbox's own data
(tests/oracle.py), never from the pipeline's tables."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest
from flow_runs import billed
from oracle import expected_billing, expected_stale

from bullphish_billing.dates import yesterday_utc
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")

CONFIG = SandboxConfig(seed=3, partners=9, short_pages=True, malformed_rate=0.01)


def test_stale_counts_match_the_sandbox_and_year_zero_is_kept(configure, warehouse_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    day = yesterday_utc() - dt.timedelta(days=2)
    with RunningSandbox(CONFIG) as sandbox:
        configure(sandbox, BILLING_HOLD_THRESHOLD="1.0", BILLING_STALE_DAYS="200")
        summary = billed(usage_date=day)
        world = sandbox.world
    expected = expected_billing(world, day, threshold=1.0)
    want = expected_stale(world, day, expected, stale_days=200)
    assert want, "the sandbox has dormant users"
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        got = {
            (p, o): (a, s, u)
            for p, o, a, s, u in con.execute(
                "SELECT partner_id, organization_id, active_targets, stale_targets, "
                "undated_targets FROM stale_active_targets WHERE usage_date = ?",
                [day],
            ).fetchall()
        }
        assert got == want
        # the view reads whole in Python (no date-time before year 1 anywhere)
        assert con.execute("SELECT * FROM stale_active_targets").fetchall()
        assert con.execute("SELECT * FROM raw.targets WHERE partner_id = 'p_0002'").fetchall()
        # p_0002's target dated year 0000 is counted, its date-time null, the reason recorded
        assert want[("p_0002", "o_0002o0001")][2] == 1
        assert con.execute(
            "SELECT entity, record_id, reason FROM ops.normalized_values WHERE usage_date = ?",
            [day],
        ).fetchall() == [
            (
                "target",
                "t_0002u000002",
                "updated_at: before year 1, not a real date-time; stored as null",
            )
        ]
    # the notable-changes artifact lists the per-user organizations above 25% stale
    per_user = {p for (p, _o, t) in expected.metrics if t.endswith(".per_user")}
    heavy = sorted((p, o) for (p, o), (a, s, _u) in want.items() if p in per_user and s / a > 0.25)
    assert heavy
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"notable-changes-{day}"]))
        )
    markdown = next(
        a.data
        for a in artifacts
        if a.flow_run_id is not None and str(a.flow_run_id) == summary.run_id
    )
    assert f"{len(heavy)} per-user organization(s)" in markdown
    for p, o in heavy:
        assert f"`{p}` | `{o}` |" in markdown
