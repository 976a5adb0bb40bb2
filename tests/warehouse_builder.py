"""Hand-built partner-dates loaded through the real validation and raw-snapshot code."""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb

from bullphish_billing import billing_rules
from bullphish_billing.validation import ORGANIZATION, PARTNER, TARGET, validate_records
from bullphish_billing.warehouse.raw import (
    Snapshot,
    extracted_partners,
    replace_partners,
    write_snapshots,
)

DAY = dt.date(2026, 11, 20)
TS = "2026-11-01T10:00:00Z"


def partner(
    pid: str,
    sub: str = "per_user",
    activated: bool = True,
    psa: str | None = "autotask",
    unified: bool = True,
    **extra: Any,
) -> dict:
    return {
        "id": pid,
        "name": f"MSP {pid}",
        "subscription_type": sub,
        "kaseyaone": {"activated": activated, "psa": psa, "unified_login_enabled": unified},
        "updated_at": TS,
        **extra,
    }


def org(
    oid: str,
    pid: str,
    status: str = "active",
    ta: bool = True,
    ph: bool = True,
    parent: str | None = None,
    **extra: Any,
) -> dict:
    return {
        "id": oid,
        "partner_id": pid,
        "name": f"Customer {oid}",
        "parent_id": parent,
        "status": status,
        "modules": {"training_awareness": ta, "phishing": ph},
        "created_at": TS,
        **extra,
    }


def target(tid: str, oid: str, status: str = "active", **extra: Any) -> dict:
    return {
        "id": tid,
        "organization_id": oid,
        "email": f"{tid}@example.test",
        "first_name": "Ann",
        "last_name": "Lee",
        "status": status,
        "updated_at": TS,
        **extra,
    }


def load(
    con: duckdb.DuckDBPyConnection,
    partners: list[Any],
    orgs: dict[str, list[Any]],
    targets: dict[str, list[Any]],
    day: dt.date = DAY,
) -> None:
    """Load partners and each partner's records as one page each."""
    batch = validate_records(PARTNER, partners, [(0, i) for i in range(len(partners))])
    replace_partners(con, day, batch, "test-run")
    snapshots = []
    for pid in sorted(set(orgs) | set(targets)):
        snap = Snapshot(pid)
        for entity, records in ((ORGANIZATION, orgs.get(pid, [])), (TARGET, targets.get(pid, []))):
            b = validate_records(
                entity, records, [(0, i) for i in range(len(records))], expected_partner_id=pid
            )
            snap.add(entity.name, b, received=len(records))
        snapshots.append(snap)
    write_snapshots(con, day, snapshots, "test-run", replacing=extracted_partners(con, day))


def evaluate(
    con: duckdb.DuckDBPyConnection, pids: list[str], threshold: float = 1.0, day: dt.date = DAY
) -> dict[str, billing_rules.Evaluation]:
    return billing_rules.evaluate(con, day, pids, hold_threshold=threshold, run_id="test-run")


def metrics(
    con: duckdb.DuckDBPyConnection, pid: str, day: dt.date = DAY
) -> dict[tuple[str, str], int]:
    rows = con.execute(
        "SELECT organization_id, billing_type, units FROM billing_metrics "
        "WHERE usage_date = ? AND partner_id = ?",
        [day, pid],
    ).fetchall()
    return {(o, b): u for o, b, u in rows}


def quarantine(con: duckdb.DuckDBPyConnection, pid: str | None = None) -> list[tuple]:
    return con.execute(
        "SELECT entity, record_id, reason FROM ops.quarantine "
        "WHERE ($p IS NULL OR partner_id = $p) ORDER BY ALL",
        {"p": pid},
    ).fetchall()
