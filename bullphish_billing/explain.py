"""`bullphish-billing explain`: why a billed number is what it is.

For each metric of a partner-date: its units and the rule that produced them, the target
records counted and those left out by reason, the previous reported day, what was sent of it
and KaseyaOne's answer, and what KaseyaOne held at the last reconciliation. The units'
explanation is the analysts' view `main.metric_explanations` (one source of truth); the
delivery facts come from ops.* (sql/explain/*.sql). The warehouse is opened read-only, as an
analyst's session opens it. Ids and counts only: no personal data is stored, none is printed.
`--targets` lists ids from the partner-date's target snapshot (raw.targets); once
BILLING_RAW_RETENTION_DAYS has dropped it (retention.py), it says so instead.
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from bullphish_billing import retention, stale_targets, target_fates
from bullphish_billing.errors import UsageError, WarehouseError
from bullphish_billing.text import shown
from bullphish_billing.warehouse import sqlfiles
from bullphish_billing.warehouse.db import fetch_all, open_read_only

VIEW = "main.metric_explanations"
COUNTED_KINDS = ("module enabled", "module disabled")


@dataclass(frozen=True)
class Query:
    usage_date: dt.date
    partner_id: str
    organization_id: str | None = None
    billing_type: str | None = None


def _dicts(con: duckdb.DuckDBPyConnection, sql: str, params: Any) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _iso(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _outcome(con: duckdb.DuckDBPyConnection, q: Query) -> dict[str, Any]:
    rows = _dicts(con, sqlfiles.text("explain/outcome"), {"d": q.usage_date, "p": q.partner_id})
    if rows:
        return rows[0]
    if not fetch_all(
        con, "SELECT 1 FROM ops.partner_runs WHERE usage_date = ? LIMIT 1", [q.usage_date]
    ):
        raise UsageError(f"{q.usage_date} was never processed (no run recorded it)")
    raise UsageError(
        f"partner {shown(q.partner_id)} was never processed for {q.usage_date} (no run recorded it)"
    )


def _delivery(row: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    """What was sent of the metric (its current units) and KaseyaOne's answer."""
    units, acked = row["units"], row["acknowledged_units"]
    sent = {
        "idempotency_key": row["idempotency_key"],
        "sent_at": _iso(row["sent_at"]),
        "answered_at": _iso(row["acknowledged_at"]),
        "http_status": row["http_status"],
    }
    if acked is not None and acked == units:
        by_last_run = row["sent_by_run"] == outcome["run_id"]
        if row["accepted"]:
            state, detail = "acknowledged", "KaseyaOne accepted it"
        else:
            state = "rejected"
            detail = f"KaseyaOne rejected it: {row['rejected_reason']}"
        if not by_last_run:
            detail += " (unchanged since: the last run did not send it again)"
        return {
            "state": state,
            "units_sent": acked,
            "reason": row["rejected_reason"],
            "sent_by_last_run": by_last_run,
            "detail": detail,
            **sent,
        }
    if row["unanswered_key"] is not None and row["batch_units"] == units:
        status = row["unanswered_status"]
        detail = f"in batch {row['unanswered_key']} ({status}), not acknowledged"
        if row["unanswered_error"]:
            detail += f": {row['unanswered_error']}"
        return {
            "state": "pending" if status == "pending" else "failed",
            "units_sent": None,
            "reason": row["unanswered_error"],
            "sent_by_last_run": None,
            "detail": detail + ("; the next run sends it" if status == "pending" else ""),
            "idempotency_key": row["unanswered_key"],
            "sent_at": _iso(row["unanswered_at"]),
            "answered_at": None,
            "http_status": None,
        }
    if outcome["status"] == "dry_run" or outcome["dry_run"]:
        state, detail = "not sent", "not sent: the last run was a dry run"
    else:
        state, detail = "not sent", f"not sent (the last run: {outcome['status']})"
    if acked is not None:
        detail += f"; KaseyaOne's last answer was for {acked} units ({row['idempotency_key']})"
    return {
        "state": state,
        "units_sent": acked,
        "reason": None,
        "sent_by_last_run": False,
        "detail": detail,
        **sent,
    }


def _reconciliation(row: dict[str, Any]) -> dict[str, Any]:
    """What KaseyaOne held at the partner-date's last reconciliation."""
    if row["check_id"] is None:
        return {
            "state": "never reconciled",
            "kaseyaone_units": None,
            "checked_at": None,
            "check_id": None,
            "difference": None,
        }
    if row["difference"] is not None:
        held, state = row["kaseyaone_units"], row["difference"]
    elif row["accepted"]:
        held, state = row["acknowledged_units"], "match"
    else:  # never acknowledged (rejected, not sent): KaseyaOne holds none, as expected
        held, state = None, "not held"
    return {
        "state": state,
        "kaseyaone_units": held,
        "checked_at": _iso(row["checked_at"]),
        "check_id": row["check_id"],
        "difference": row["difference"],
    }


def _reason(row: dict[str, Any], ids: _Ids | None) -> dict[str, Any]:
    out = {
        "kind": row["kind"],
        "reason": row["reason"],
        "counted": row["counted"],
        "records": row["records"],
        "rule": row["rule"],
    }
    if ids is not None:
        out["target_ids"] = ids.of(row)
    return out


def _stale(
    found: stale_targets.StaleOrganization | None, subscription_type: str
) -> dict[str, Any] | None:
    """The organization's stale active users (per-user metrics; billing does not change)."""
    if subscription_type != "per_user":
        return None
    if found is None:
        return {"stale_targets": 0, "undated_targets": 0, "oldest_updated_at": None}
    return {
        "stale_targets": found.stale_targets,
        "undated_targets": found.undated_targets,
        "oldest_updated_at": _iso(found.oldest_updated_at),
    }


class _Ids:
    """`--targets`: the partner-date's target ids by organization and reason, from the
    warehouse's snapshot (the view counts them; the ids stay in raw.targets)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, q: Query) -> None:
        self.by_reason = target_fates.target_ids(con, q.usage_date, q.partner_id)
        self.by_kind: dict[tuple[str | None, str], list[str]] = {}
        for (org, kind, _reason), ids in self.by_reason.items():
            if kind != "quarantined":  # one reason per kind: an organization's row names it
                self.by_kind[(org, kind)] = ids

    def of(self, row: dict[str, Any]) -> list[str]:
        org, kind = row["organization_id"], row["kind"]
        found = self.by_reason.get((org, kind, row["reason"]))
        return found if found is not None else self.by_kind.get((org, kind), [])


def _target_snapshot(con: duckdb.DuckDBPyConnection, q: Query) -> dict[str, Any]:
    """Whether the partner-date's target snapshot (raw.targets) is kept, was dropped by
    BILLING_RAW_RETENTION_DAYS (when, and by which setting), or never existed (None)."""
    dropped = retention.snapshot_dropped(con, q.usage_date, q.partner_id)
    if dropped is not None:
        return {
            "state": "dropped",
            "dropped_at": _iso(dropped["dropped_at"]),
            "retention_days": dropped["retention_days"],
            "kept_from": _iso(dropped["kept_from"]),
        }
    extracted = fetch_all(
        con,
        "SELECT 1 FROM ops.extractions WHERE usage_date = ? AND partner_id = ?",
        [q.usage_date, q.partner_id],
    )
    return {
        "state": "kept" if extracted else None,
        "dropped_at": None,
        "retention_days": None,
        "kept_from": None,
    }


def explain(con: duckdb.DuckDBPyConnection, q: Query, *, targets: bool = False) -> dict[str, Any]:
    """The explanation of a partner-date's metrics as a JSON-ready document. UsageError when
    the date or partner was never processed, or the organization or billing type is not
    there."""
    outcome = _outcome(con, q)
    where = ["usage_date = $d", "partner_id = $p"]
    params: dict[str, Any] = {"d": q.usage_date, "p": q.partner_id}
    if q.organization_id is not None:
        where.append("organization_id = $o")
        params["o"] = q.organization_id
    if q.billing_type is not None:
        where.append("billing_type = $t")
        params["t"] = q.billing_type
    rows = _dicts(
        con,
        f"SELECT * FROM {VIEW} WHERE {' AND '.join(where)} "
        "ORDER BY organization_id NULLS LAST, billing_type, counted DESC, kind, reason",
        params,
    )
    if not rows and (q.organization_id or q.billing_type):
        what = " ".join(shown(v) for v in (q.organization_id, q.billing_type) if v is not None)
        raise UsageError(f"nothing for {what} of {q.partner_id} on {q.usage_date}")
    delivery = {
        (r["organization_id"], r["billing_type"]): r
        for r in _dicts(
            con, sqlfiles.text("explain/delivery"), {"d": q.usage_date, "p": q.partner_id}
        )
    }
    snapshot = _target_snapshot(con, q)
    # the ids come from the snapshot: once dropped, there are none to list (not an empty list)
    ids = _Ids(con, q) if targets and snapshot["state"] != "dropped" else None
    stale = {s.organization_id: s for s in stale_targets.stored(con, q.usage_date, [q.partner_id])}
    metrics: dict[tuple[str, str], dict[str, Any]] = {}
    not_billed: list[dict[str, Any]] = []
    for row in rows:
        if row["billing_type"] is None:
            not_billed.append({"organization_id": row["organization_id"], **_reason(row, ids)})
            continue
        key = (row["organization_id"], row["billing_type"])
        metric = metrics.get(key)
        if metric is None:
            facts = delivery.get(key)
            metric = metrics[key] = {
                "organization_id": row["organization_id"],
                "billing_type": row["billing_type"],
                "subscription_type": row["subscription_type"],
                "units": row["units"],
                "module_enabled": row["module_enabled"],
                "rule": row["rule"],
                "previous": {
                    "usage_date": _iso(row["previous_usage_date"]),
                    "units": row["previous_units"],
                    "change": row["change"],
                },
                "reasons": [],
                "stale": _stale(stale.get(row["organization_id"]), row["subscription_type"]),
                "sent": _delivery(facts, outcome) if facts else None,
                "kaseyaone": _reconciliation(facts) if facts else None,
            }
        if row["kind"] not in COUNTED_KINDS:
            metric["reasons"].append(_reason(row, ids))
    return {
        "usage_date": q.usage_date.isoformat(),
        "partner_id": q.partner_id,
        "organization_id": q.organization_id,
        "billing_type": q.billing_type,
        "partner_date": {
            "status": outcome["status"],
            "reason": outcome["reason"],
            "subscription_type": outcome["subscription_type"],
            "run_id": outcome["run_id"],
            "finished_at": _iso(outcome["finished_at"]),
        },
        "metrics": list(metrics.values()),
        "not_billed": not_billed,
        "stale_days": next(iter(stale.values())).stale_days if stale else None,
        "target_snapshot": snapshot,
        "targets_asked": targets,
    }


def explain_file(
    path: Path, q: Query, *, targets: bool = False, lock_wait_s: float = 0.0
) -> dict[str, Any]:
    """`explain` on the warehouse at `path`, opened read-only for as long as the queries take."""
    with open_read_only(path, lock_wait_s=lock_wait_s) as con:
        found = fetch_all(
            con,
            "SELECT 1 FROM duckdb_views() WHERE database_name = current_database() "
            "AND schema_name = 'main' AND view_name = 'metric_explanations'",
        )
        if not found:
            raise WarehouseError(
                f"the warehouse {shown(path)} has no metric_explanations view yet: it was last "
                "written by an older bullphish-billing; the next run adds it"
            )
        return explain(con, q, targets=targets)


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False)


def _units(n: int) -> str:
    return f"{n} unit" if n == 1 else f"{n} units"


def _signed(n: int | None) -> str:
    return "" if n is None else f"{n:+d}"


def render(doc: dict[str, Any]) -> str:
    """The explanation for the terminal: a header, a block per metric, what was not billed."""
    pd = doc["partner_date"]
    lines = [
        f"{doc['partner_id']} on {doc['usage_date']}: {pd['status']}"
        + (f" ({pd['reason']})" if pd["reason"] else "")
        + f", subscription {pd['subscription_type'] or '-'}, last run {pd['run_id']}"
        f" at {pd['finished_at']}"
    ]
    if not doc["metrics"] and pd["status"] in ("skipped", "held", "failed"):
        lines.append(f"no metric of this partner-date: it was {pd['status']}")
    snapshot = doc.get("target_snapshot") or {}
    if doc.get("targets_asked") and snapshot.get("state") == "dropped":
        lines.append(
            f"targets: no ids to list: the target snapshot of {doc['usage_date']} was dropped on "
            f"{snapshot['dropped_at'][:10]} by BILLING_RAW_RETENTION_DAYS="
            f"{snapshot['retention_days']} (the counts below stay)"
        )
    for m in doc["metrics"]:
        lines += ["", f"{m['organization_id']}  {m['billing_type']}  = {_units(m['units'])}"]
        rows = [("rule", m["rule"], "")]
        for r in m["reasons"]:
            label = (
                "counted"
                if r["counted"]
                else "left out"
                if r["kind"] != "active"
                else "not counted"
            )
            rows.append((label, r["reason"], str(r["records"])))
        stale = m.get("stale")
        if stale and (stale["stale_targets"] or stale["undated_targets"]):
            text = f"active users not updated in {doc['stale_days']} days"
            if stale["oldest_updated_at"]:
                text += f" (oldest {stale['oldest_updated_at'][:10]}); billed all the same"
            if stale["undated_targets"]:
                text += f"; {stale['undated_targets']} with no real updated_at"
            rows.append(("stale", text, str(stale["stale_targets"])))
        prev = m["previous"]
        if prev["usage_date"] is None:
            rows.append(("previous", "none: the partner's first reported day", ""))
        elif prev["units"] is None:
            rows.append(("previous", f"{prev['usage_date']}: not reported (new)", ""))
        else:
            rows.append(
                (
                    "previous",
                    f"{prev['usage_date']}: {_units(prev['units'])}",
                    _signed(m["previous"]["change"]),
                )
            )
        sent = m["sent"]
        if sent is not None:
            key = (
                f"batch {sent['idempotency_key']} at {sent['sent_at']}: "
                if sent["idempotency_key"] and sent["state"] in ("acknowledged", "rejected")
                else ""
            )
            rows.append(("sent", key + sent["detail"], ""))
            k1 = m["kaseyaone"]
            if k1["state"] == "never reconciled":
                rows.append(("KaseyaOne", "never reconciled", ""))
            else:
                held = (
                    "nothing" if k1["kaseyaone_units"] is None else f"{k1['kaseyaone_units']} units"
                )
                rows.append(
                    (
                        "KaseyaOne",
                        f"{held} at the reconciliation of {k1['checked_at']} ({k1['state']})",
                        "",
                    )
                )
        lines += _table(rows)
        lines += _target_lines(m["reasons"])
    if doc["not_billed"]:
        lines += ["", "not billed (no metric):"]
        rows = [
            (
                r["organization_id"] or "-",
                r["reason"],
                "" if r["records"] is None else str(r["records"]),
            )
            for r in doc["not_billed"]
        ]
        lines += _table(rows)
        lines += _target_lines(doc["not_billed"])
    return "\n".join(lines)


def _target_lines(reasons: list[dict[str, Any]]) -> list[str]:
    """`--targets`: the ids of each reason, wrapped."""
    lines = []
    for r in reasons:
        if r.get("target_ids"):
            lines += textwrap.wrap(
                " ".join(r["target_ids"]),
                width=100,
                initial_indent=f"  targets, {r['reason']}: ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
    return lines


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    """(label, text, count) rows: label, the count right-aligned, then the text."""
    w0 = max(len(r[0]) for r in rows)
    wc = max(len(r[2]) for r in rows)
    return [f"  {a:<{w0}}  {c:>{wc}}  {b}".rstrip() for a, b, c in rows]
