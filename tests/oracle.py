"""The expected billing of a sandbox date, computed straight from the sandbox's own data.

Written independently of the pipeline: plain Python over the records the sandbox serves
(`World`), each record checked against the contract's JSON schema (read from
docs/contracts), and docs/billing-rules.md's rules applied one by one. Tests compare the pipeline's
deliveries with this, never with the pipeline's own tables.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from contracts import CONTRACTS
from jsonschema import Draft202012Validator

MODULES = ("training_awareness", "phishing")


def _validators() -> dict[str, Draft202012Validator]:
    spec = yaml.safe_load((CONTRACTS / "bullphish-id.openapi.yaml").read_text())
    schemas = spec["components"]["schemas"]
    return {
        name: Draft202012Validator(schemas[name]) for name in ("Partner", "Organization", "Target")
    }


VALIDATORS = _validators()


def _valid(kind: str, record: Any) -> bool:
    if not isinstance(record, dict):
        return False
    if not VALIDATORS[kind].is_valid(record):
        return False
    stamp = "updated_at" if kind != "Organization" else "created_at"
    value = record[stamp]
    if isinstance(value, str) and value.startswith("0000-"):
        value = "0001-" + value[5:]  # year 0000 is well formed (no real day: stored as null)
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    # format keywords are not asserted by jsonschema; the id patterns are
    return bool(re.fullmatch(r"[pot]_[A-Za-z0-9]{1,40}", record["id"]))


def _canon(record: Any) -> str:
    return json.dumps(record, sort_keys=True)


def _split(
    kind: str, records: list[Any], extra_ok=lambda r: True
) -> tuple[dict[str, dict], set[str], int]:
    """(good records by id, ids with a bad or conflicting copy, quarantined copies)."""
    copies: dict[str, list[Any]] = {}
    anonymous_bad = 0
    for r in records:
        rid = r.get("id") if isinstance(r, dict) else None
        if isinstance(rid, str) and re.fullmatch(r"[pot]_[A-Za-z0-9]{1,40}", rid):
            copies.setdefault(rid, []).append(r)
        else:
            anonymous_bad += 1
    good, bad_ids, quarantined = {}, set(), anonymous_bad
    for rid, recs in copies.items():
        ok = [r for r in recs if _valid(kind, r) and extra_ok(r)]
        if len(ok) == len(recs) and len({_canon(r) for r in recs}) == 1:
            good[rid] = recs[0]
        else:
            bad_ids.add(rid)
            quarantined += len(recs)
    return good, bad_ids, quarantined


@dataclass
class Expected:
    billable: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)
    metrics: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (pid, oid, type)

    def for_partner(self, pid: str) -> dict[tuple[str, str], int]:
        return {(o, t): u for (p, o, t), u in self.metrics.items() if p == pid}


def expected_billing(world: Any, day: dt.date, threshold: float = 0.01) -> Expected:
    out = Expected()
    partners, bad_partners, _ = _split("Partner", world.partners(day))
    out.held |= bad_partners
    for pid, p in partners.items():
        k1 = p["kaseyaone"]
        if not (k1["activated"] and k1["psa"] is not None and k1["unified_login_enabled"]):
            out.skipped.add(pid)
            continue
        out.billable.add(pid)
        orgs_raw, targets_raw = world.organizations(pid, day), world.targets(pid, day)
        orgs, held_orgs, q_orgs = _split(
            "Organization", orgs_raw, lambda r, pid=pid: r["partner_id"] == pid
        )
        targets, _, q_targets = _split("Target", targets_raw)
        known = set(orgs) | held_orgs
        unknown = [t for t in targets.values() if t["organization_id"] not in known]
        q_targets += sum(1 for r in targets_raw if isinstance(r, dict) and r in unknown)
        quarantined = q_orgs + q_targets
        if quarantined > threshold * (len(orgs_raw) + len(targets_raw)):
            out.held.add(pid)
            continue
        active: dict[str, int] = {}
        for t in targets.values():
            if t["status"] == "active" and t["organization_id"] in orgs:
                active[t["organization_id"]] = active.get(t["organization_id"], 0) + 1
        sub = p["subscription_type"]
        for oid, o in orgs.items():
            if o["status"] != "active":
                continue
            for module in MODULES:
                on = o["modules"][module]
                units = (
                    (1 if on else 0)
                    if sub == "per_organization"
                    else (active.get(oid, 0) if on else 0)
                )
                out.metrics[(pid, oid, f"bullphish_id.{module}.{sub}")] = units
    return out


def expected_in_kaseyaone(world: Any, expected: Expected) -> dict[tuple[str, str, str], int]:
    """What KaseyaOne should hold after delivery: linked partners, linked organizations."""
    held = {}
    for (pid, oid, btype), units in expected.metrics.items():
        if world.is_partner_linked(pid) and oid in world.linked_organization_ids(pid):
            held[(pid, oid, btype)] = units
    return held


def _updated(record: dict) -> dt.datetime | None:
    """A target's updated_at; None for one that names no real day (year 0000)."""
    value = record["updated_at"]
    if value.startswith("0000-"):
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def expected_stale(
    world: Any, day: dt.date, expected: Expected, stale_days: int
) -> dict[tuple[str, str], tuple[int, int, int]]:
    """Per billed (partner, organization) with a stale or undated active target: (active
    targets counted, of them updated before `day` - `stale_days` at 00:00 UTC, of them with no
    real updated_at)."""
    edge = dt.datetime.combine(day - dt.timedelta(days=stale_days), dt.time(), dt.UTC)
    billed = {(p, o) for (p, o, _t) in expected.metrics}
    out = {}
    for pid in sorted({p for p, _o in billed}):
        targets, _, _ = _split("Target", world.targets(pid, day))
        counts: dict[str, list[int]] = {}
        for t in targets.values():
            if t["status"] != "active" or (pid, t["organization_id"]) not in billed:
                continue
            c = counts.setdefault(t["organization_id"], [0, 0, 0])
            updated = _updated(t)
            c[0] += 1
            c[1] += updated is not None and updated < edge
            c[2] += updated is None
        out |= {(pid, oid): tuple(c) for oid, c in counts.items() if c[1] or c[2]}
    return out


@dataclass
class Excluded:
    """What happened to a billed partner's target records, by kind, as its data implies:
    `by_org[(organization, kind)]` counts records (active: each id once), `bad_records` counts
    the records that fail the contract (their organization is not to be trusted), and
    `received[organization]` the well-formed records naming each organization."""

    by_org: dict[tuple[str, str], int] = field(default_factory=dict)
    bad_records: int = 0
    received: dict[str, int] = field(default_factory=dict)
    held_orgs: set[str] = field(default_factory=set)
    archived_orgs: set[str] = field(default_factory=set)


def expected_exclusions(world: Any, day: dt.date, pid: str) -> Excluded:
    """Rules 2, 4, 6, 7 applied to one partner's targets of `day`, record by record, first
    match wins: a copy of an id served with different content (or beside a bad copy) is a
    conflicting duplicate; a target naming an organization the partner does not have is an
    unknown organization; one of a held (bad-record) or archived organization is left out for
    that; a second identical copy is collapsed; the rest are active or inactive."""
    out = Excluded()
    orgs, held, _ = _split(
        "Organization", world.organizations(pid, day), lambda r: r["partner_id"] == pid
    )
    out.held_orgs = held
    out.archived_orgs = {oid for oid, o in orgs.items() if o["status"] != "active"}
    records = world.targets(pid, day)
    good = [r for r in records if _valid("Target", r)]
    out.bad_records = len(records) - len(good)
    _, conflicting, _ = _split("Target", records)
    seen: set[str] = set()
    for r in good:
        oid = r["organization_id"]
        out.received[oid] = out.received.get(oid, 0) + 1
        if r["id"] in conflicting:
            kind = "conflicting duplicate"
        elif oid not in orgs and oid not in held:
            kind = "unknown organization"
        elif oid in held:
            kind = "organization held"
        elif oid in out.archived_orgs:
            kind = "organization archived"
        elif r["id"] in seen:
            kind = "exact duplicate collapsed"
        else:
            kind = r["status"]
        seen.add(r["id"])
        out.by_org[(oid, kind)] = out.by_org.get((oid, kind), 0) + 1
    return out
