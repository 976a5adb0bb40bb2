"""Shared by the fault tests (crash safety, outages, warehouse faults, secrets): the Prefect API
for CLI children (`child_env`, `run_cli` are in sandbox_env.py), and the checks that say
"delivered exactly once".

Child processes run `python -m bullphish_billing` against the Prefect server of the session's
test harness (`PREFECT_API_URL`), so none of them pays for an ephemeral server of its own.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from oracle import Expected, expected_billing, expected_in_kaseyaone
from sandbox_env import stored

from bullphish_billing.sandbox import RunningSandbox


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness) -> str:
    """The API of the session's Prefect test server, for child processes."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the Prefect test harness has no API URL"
    return url


def our_error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The CLI's own error lines (Prefect may log around them)."""
    return [line for line in result.stderr.splitlines() if line.startswith("bullphish-billing")]


_ORACLE: dict[tuple, tuple[Expected, dict[tuple[str, str, str], int]]] = {}


def oracle(sandbox: RunningSandbox, day: dt.date) -> tuple[Expected, dict]:
    """(expected billing, what KaseyaOne should hold) for the date, from the sandbox's own data
    (tests/oracle.py), computed once per world and date."""
    key = (sandbox.config, sandbox.world.today, day)  # the data depends on these only
    if key not in _ORACLE:
        expected = expected_billing(sandbox.world, day)
        _ORACLE[key] = (expected, expected_in_kaseyaone(sandbox.world, expected))
    return _ORACLE[key]


def expected_stored(sandbox: RunningSandbox, day: dt.date) -> dict[tuple[str, str, str], int]:
    """What KaseyaOne should hold for the date."""
    return oracle(sandbox, day)[1]


def differences(got: dict, want: dict, limit: int = 5) -> str:
    """A few keys on which two mappings differ, for an assertion message."""
    keys = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
    shown = ", ".join(f"{k}: got {got.get(k)} want {want.get(k)}" for k in keys[:limit])
    return f"{len(keys)} differences: {shown}"


def assert_no_double_sends(sandbox: RunningSandbox) -> None:
    """No 409 (a key reused with another body), and every Idempotency-Key stored once."""
    assert all(r.status != 409 for r in sandbox.kaseyaone.requests), "a key was reused"
    keys = Counter(r.idempotency_key for r in sandbox.kaseyaone.sends())
    assert not keys or max(keys.values()) == 1, keys.most_common(3)


def assert_delivered_partner_dates_are_in_kaseyaone(
    sandbox: RunningSandbox, warehouse: Path
) -> None:
    """No partner-date is recorded as delivered (by any run) that KaseyaOne does not hold."""
    with duckdb.connect(str(warehouse), read_only=True) as con:
        delivered = con.execute(
            "SELECT DISTINCT usage_date, partner_id FROM ops.partner_runs "
            "WHERE status = 'delivered'"
        ).fetchall()
    for day, partner in delivered:
        want = {k: u for k, u in expected_stored(sandbox, day).items() if k[0] == partner}
        held = {k: u for k, u in stored(sandbox, day).items() if k[0] == partner}
        assert held == want, (
            f"{partner} on {day} is recorded delivered; KaseyaOne: {differences(held, want)}"
        )


def assert_delivered_exactly_once(sandbox: RunningSandbox, warehouse: Path, day: dt.date) -> None:
    """KaseyaOne holds exactly the oracle's metrics for the date, nothing was applied twice,
    and the warehouse agrees: its metrics are the oracle's, nothing is left pending, and what
    it records as acknowledged-and-accepted is exactly what KaseyaOne holds."""
    expected, want = oracle(sandbox, day)
    assert want, "the sandbox should bill something on this date"
    got = stored(sandbox, day)
    assert got == want, f"KaseyaOne on {day}: {differences(got, want)}"
    assert_no_double_sends(sandbox)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        metrics = {
            (p, o, t): u
            for p, o, t, u in con.execute(
                "SELECT partner_id, organization_id, billing_type, units FROM billing_metrics "
                "WHERE usage_date = ?",
                [day],
            ).fetchall()
        }
        pending = con.execute(
            "SELECT count(*) FROM ops.outbox WHERE status = 'pending' AND usage_date = ?", [day]
        ).fetchall()[0][0]
        accepted = {
            (p, o, t): u
            for p, o, t, u in con.execute(
                "SELECT partner_id, organization_id, billing_type, units "
                "FROM ops.acknowledged_metrics WHERE usage_date = ? AND accepted",
                [day],
            ).fetchall()
        }
    assert metrics == expected.metrics, f"billing_metrics: {differences(metrics, expected.metrics)}"
    assert pending == 0, f"{pending} batches of {day} still pending"
    assert accepted == want, f"acknowledged as accepted: {differences(accepted, want)}"
    assert_delivered_partner_dates_are_in_kaseyaone(sandbox, warehouse)
