"""The sandbox's generated data: deterministic, changing day to day, and exercising every
billing rule of docs/billing-rules.md with the documented special cases (and no others)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections import Counter

import orjson
import pytest
import yaml
from contracts import CONTRACTS
from openapi_schema_validator import OAS31Validator

from bullphish_billing.sandbox import World
from bullphish_billing.sandbox.cli_options import add_arguments, config_from_args
from bullphish_billing.sandbox.config import SandboxConfig

TODAY = dt.date(2025, 11, 25)
YESTERDAY = TODAY - dt.timedelta(days=1)
CONFIG = SandboxConfig(today=TODAY)


def _validators() -> dict[str, OAS31Validator]:
    spec = yaml.safe_load((CONTRACTS / "bullphish-id.openapi.yaml").read_text())
    schemas = spec["components"]["schemas"]
    return {
        name: OAS31Validator(schemas[name], format_checker=OAS31Validator.FORMAT_CHECKER)
        for name in ("Partner", "Organization", "Target")
    }


SCHEMAS = _validators()


def _valid(kind: str, record: dict) -> bool:
    return SCHEMAS[kind].is_valid(record)


def _days(n: int) -> list[dt.date]:
    return [YESTERDAY - dt.timedelta(days=i) for i in range(n)]


@pytest.fixture(scope="module")
def world() -> World:
    return World(CONFIG)


def _eligible(partner: dict) -> bool:
    k1 = partner["kaseyaone"]
    return k1["activated"] and k1["psa"] is not None and k1["unified_login_enabled"]


# ---------------------------------------------------------------------- determinism
def test_same_seed_same_data_other_seed_other_data():
    a, b, c = World(CONFIG), World(CONFIG), World(SandboxConfig(today=TODAY, seed=8))
    for day in (YESTERDAY, YESTERDAY - dt.timedelta(days=200)):
        assert a.partners(day) == b.partners(day)
        for pid in a.partner_ids():
            assert a.organizations(pid, day) == b.organizations(pid, day)
            assert a.targets(pid, day) == b.targets(pid, day)
    assert json.dumps(a.targets("p_0009", YESTERDAY)) != json.dumps(c.targets("p_0009", YESTERDAY))
    assert a.organization_mappings("p_0009") == b.organization_mappings("p_0009")


def test_a_date_does_not_depend_on_what_was_generated_before():
    fresh, warmed = World(CONFIG), World(CONFIG)
    for day in _days(5):
        warmed.targets("p_0010", day)
    assert fresh.targets("p_0010", YESTERDAY - dt.timedelta(days=2)) == warmed.targets(
        "p_0010", YESTERDAY - dt.timedelta(days=2)
    )


def test_the_served_json_is_the_records_json():
    """The sandbox serves target_json (for ordinary partners of a sandbox without malformed
    records: built from each target's fixed JSON, no dict per record); it must be exactly the
    JSON of `targets`, which tests compute billing from, for every role and on days on which
    some organizations did not exist yet."""
    world = World(CONFIG)
    for day in (YESTERDAY, YESTERDAY - dt.timedelta(days=3), YESTERDAY - dt.timedelta(days=200)):
        for pid in world.partner_ids():
            records = world.targets(pid, day)
            assert world.target_json(pid, day) == [orjson.dumps(r) for r in records], (pid, day)


def test_today_defaults_to_the_real_utc_date():
    world = World(SandboxConfig())
    assert world.today == dt.datetime.now(dt.UTC).date()
    assert world.yesterday == world.today - dt.timedelta(days=1)


# ---------------------------------------------------------------------- realistic mix
def test_partners_cover_every_prerequisite_and_both_subscriptions(world):
    partners = {p["id"]: p for p in world.partners(YESTERDAY)}
    assert len(partners) == 12 and all(_valid("Partner", p) for p in partners.values())
    assert {p["subscription_type"] for p in partners.values()} == {"per_user", "per_organization"}
    assert {p["kaseyaone"]["psa"] for p in partners.values()} == {"autotask", "bms", None}
    assert partners["p_0003"]["kaseyaone"]["activated"] is False
    assert partners["p_0004"]["kaseyaone"]["psa"] is None
    assert partners["p_0005"]["kaseyaone"]["unified_login_enabled"] is False
    for pid in ("p_0003", "p_0004", "p_0005"):  # each fails exactly one prerequisite
        k1 = partners[pid]["kaseyaone"]
        assert [k1["activated"], k1["psa"] is not None, k1["unified_login_enabled"]].count(
            False
        ) == 1
    assert any("external_ref" in p for p in partners.values())  # extra fields to ignore


def test_a_partner_joins_integrated_billing(world):
    def eligible(day: dt.date) -> bool:
        return _eligible(next(p for p in world.partners(day) if p["id"] == "p_0006"))

    assert eligible(TODAY - dt.timedelta(days=3)) and eligible(YESTERDAY)
    assert not eligible(TODAY - dt.timedelta(days=4))
    assert world.partner_role("p_0006") == "joins"


def test_organizations_have_subs_archival_and_switching_modules(world):
    days = _days(120)
    seen_archived_change = seen_module_change = seen_created = False
    parents_ok = True
    for pid in world.partner_ids():
        by_day = {day: {o["id"]: o for o in world.organizations(pid, day)} for day in days}
        for newer, older in zip(days, days[1:], strict=False):
            for oid, org in by_day[newer].items():
                before = by_day[older].get(oid)
                if before is None:
                    seen_created = True
                    continue
                seen_archived_change |= before["status"] == "active" and org["status"] == "archived"
                seen_module_change |= before["modules"] != org["modules"]
        for org in by_day[YESTERDAY].values():
            assert _valid("Organization", org) and org["partner_id"] == pid
            if org["parent_id"] is not None:
                parents_ok &= org["parent_id"] in by_day[YESTERDAY]
    assert seen_archived_change and seen_module_change and seen_created and parents_ok
    orgs = [o for pid in world.partner_ids() for o in world.organizations(pid, YESTERDAY)]
    assert any(o["parent_id"] for o in orgs)
    assert any(o["status"] == "archived" for o in orgs)
    assert any("external_ref" in o for o in orgs)
    assert {o["modules"]["phishing"] for o in orgs} == {True, False}


def test_targets_change_day_to_day_and_carry_fake_personal_data(world):
    changes = 0
    for pid in world.partner_ids():
        today = {t["id"]: t["status"] for t in world.targets(pid, YESTERDAY)}
        before = {
            t["id"]: t["status"] for t in world.targets(pid, YESTERDAY - dt.timedelta(days=1))
        }
        changes += sum(1 for tid, s in today.items() if tid in before and before[tid] != s)
    assert changes >= 3
    targets = world.targets("p_0010", YESTERDAY)
    org_ids = {o["id"] for o in world.organizations("p_0010", YESTERDAY)}
    assert {t["status"] for t in targets} == {"active", "inactive"}
    assert all(t["organization_id"] in org_ids and _valid("Target", t) for t in targets)
    assert all(
        t["email"].endswith("@example-msp.test") and f"+{t['id']}@" in t["email"] for t in targets
    )
    assert any(
        t["first_name"] is None
        for pid in world.partner_ids()
        for t in world.targets(pid, YESTERDAY)
    )


def test_targets_of_archived_organizations_are_served(world):
    found = False
    for pid in world.partner_ids():
        archived = {
            o["id"] for o in world.organizations(pid, YESTERDAY) if o["status"] == "archived"
        }
        found |= any(t["organization_id"] in archived for t in world.targets(pid, YESTERDAY))
    assert found


def test_sizes_follow_the_config():
    world = World(
        SandboxConfig(
            today=TODAY, partners=3, organizations_per_partner=4, targets_per_organization=10
        )
    )
    assert world.partner_ids() == ["p_0001", "p_0002", "p_0003"]
    assert len(world.targets("p_0003", YESTERDAY - dt.timedelta(days=200))) <= 40
    assert len(world.targets("p_0003", YESTERDAY)) == 40  # every organization exists by then
    empty = World(SandboxConfig(today=TODAY, partners=2, organizations_per_partner=0))
    assert (
        empty.organizations("p_0002", YESTERDAY) == [] and empty.targets("p_0002", YESTERDAY) == []
    )
    assert [t["organization_id"] for t in empty.targets("p_0001", YESTERDAY)] == ["o_0002o0001"]


def test_generation_is_cheap():
    world = World(
        SandboxConfig(
            today=TODAY, partners=1, organizations_per_partner=100, targets_per_organization=200
        )
    )
    started = time.perf_counter()
    targets = world.targets("p_0001", YESTERDAY)
    assert len(targets) == 20_000 + 2  # plus p_0001's stray target and conflicting copy
    assert time.perf_counter() - started < 1.0


# ---------------------------------------------------------------------- special cases
def _quarantined(world: World, pid: str, day: dt.date) -> tuple[int, int]:
    """(quarantined records, records received) by rules 6 and 7, computed from scratch."""
    orgs, targets = world.organizations(pid, day), world.targets(pid, day)
    bad_orgs = [o for o in orgs if not _valid("Organization", o)]
    org_ids = {o["id"] for o in orgs}
    copies: dict[str, list[dict]] = {}
    quarantined = len(bad_orgs)
    for t in targets:
        if not _valid("Target", t):
            quarantined += 1
        else:
            copies.setdefault(t["id"], []).append(t)
    for recs in copies.values():
        if len({json.dumps(r, sort_keys=True) for r in recs}) > 1:
            quarantined += len(recs)
        elif recs[0]["organization_id"] not in org_ids:
            quarantined += 1
    return quarantined, len(orgs) + len(targets)


def test_unknown_organization_target_every_day_for_p_0001(world):
    for day in _days(3):
        orgs = {o["id"] for o in world.organizations("p_0001", day)}
        strays = [t for t in world.targets("p_0001", day) if t["organization_id"] not in orgs]
        assert len(strays) == 1 and strays[0]["organization_id"] == "o_0002o0001"
        assert _valid("Target", strays[0]) and strays[0]["status"] == "active"


def test_conflicting_duplicate_only_on_the_designated_date(world):
    assert world.hold_partner_date == ("p_0001", YESTERDAY)
    targets = world.targets("p_0001", YESTERDAY)
    copies = [t for t in targets if t["id"] == "t_0001u000001"]
    assert [c["status"] for c in copies] == ["active", "inactive"] and targets[-1] == copies[1]
    assert {k: v for k, v in copies[0].items() if k != "status"} == {
        k: v for k, v in copies[1].items() if k != "status"
    }
    earlier = world.targets("p_0001", YESTERDAY - dt.timedelta(days=1))
    assert Counter(t["id"] for t in earlier).most_common(1)[0][1] == 1


def test_exact_duplicate_every_day_for_p_0002(world):
    for day in _days(3):
        targets = world.targets("p_0002", day)
        counts = Counter(json.dumps(t, sort_keys=True) for t in targets)
        assert [n for n in counts.values() if n > 1] == [2]
        assert targets[0] == targets[-1] and targets[0] is not targets[-1]
        assert len({t["id"] for t in targets}) == len(targets) - 1


def test_only_the_designated_partner_date_exceeds_one_percent(world):
    held = set()
    for day in _days(30):
        for partner in world.partners(day):
            quarantined, received = _quarantined(world, partner["id"], day)
            if quarantined > 0.01 * received:
                held.add((partner["id"], day))
    assert held == {("p_0001", YESTERDAY)}
    for back in range(1, 400, 9):  # the designated partner across the whole history window
        quarantined, received = _quarantined(world, "p_0001", YESTERDAY - dt.timedelta(days=back))
        assert quarantined == 1 and received == 127


def test_kaseyaone_links_eligible_partners_except_p_0007(world):
    eligible = {p["id"] for p in world.partners(YESTERDAY) if _eligible(p)}
    linked = {pid for pid in world.partner_ids() if world.is_partner_linked(pid)}
    assert linked == eligible - {"p_0007"} and "p_0007" in eligible
    assert not world.is_partner_linked("p_9999")
    for pid in linked:
        org_ids = {o["id"] for o in world.organizations(pid, YESTERDAY)}
        missing = org_ids - world.linked_organization_ids(pid)
        assert missing == ({"o_0008o0002"} if pid == "p_0008" else set())
    assert world.linked_organization_ids("p_0007") == set()


def test_organization_mappings_leave_some_organizations_unmapped(world):
    for pid in ("p_0001", "p_0002", "p_0008"):
        mappings = world.organization_mappings(pid)
        psa = next(p for p in world.partners(YESTERDAY) if p["id"] == pid)["kaseyaone"]["psa"]
        mapped = {m["module_organization_id"] for m in mappings}
        assert mapped < world.linked_organization_ids(pid)
        assert f"o_{pid[2:]}o0003" not in mapped
        assert all(
            m["psa"] == psa and m["psa_company_id"] and m["psa_company_name"] for m in mappings
        )
    assert world.organization_mappings("p_0007") == []


# ---------------------------------------------------------------------- malformed records
def test_malformed_records_break_the_contract_deterministically():
    config = SandboxConfig(today=TODAY, malformed_rate=0.2, organizations_per_partner=30)
    a, b = World(config), World(config)
    orgs = [o for pid in a.partner_ids() for o in a.organizations(pid, YESTERDAY)]
    targets = [t for pid in a.partner_ids() for t in a.targets(pid, YESTERDAY)]
    assert orgs == [o for pid in b.partner_ids() for o in b.organizations(pid, YESTERDAY)]
    bad_orgs = [o for o in orgs if not _valid("Organization", o)]
    bad_targets = [t for t in targets if not _valid("Target", t)]
    assert 0.1 < len(bad_orgs) / len(orgs) < 0.3
    assert 0.1 < len(bad_targets) / len(targets) < 0.3
    assert all(o["id"].startswith("o_") for o in orgs)  # organization ids stay recognisable
    kinds = Counter()
    for t in bad_targets:
        if set(t) < {"id", "organization_id", "email", "status", "updated_at"} | {
            "first_name",
            "last_name",
        }:
            kinds["missing"] += 1
        if t.get("status") not in (None, "active", "inactive"):
            kinds["status"] += 1
        if isinstance(t.get("id"), str) and not t["id"].startswith("t_"):
            kinds["pattern"] += 1
    assert kinds["missing"] and kinds["status"] and kinds["pattern"]
    assert any(isinstance(o.get("modules", {}).get("phishing"), str) for o in bad_orgs)
    # a different day corrupts different records
    other_day = [
        t for pid in a.partner_ids() for t in a.targets(pid, YESTERDAY - dt.timedelta(days=1))
    ]
    assert {json.dumps(t) for t in other_day if not _valid("Target", t)} != {
        json.dumps(t) for t in bad_targets
    }


def test_every_record_can_be_malformed_except_the_anomalies():
    world = World(SandboxConfig(today=TODAY, malformed_rate=1.0))
    assert not any(_valid("Organization", o) for o in world.organizations("p_0010", YESTERDAY))
    assert not any(_valid("Target", t) for t in world.targets("p_0010", YESTERDAY))
    anomalies = [t for t in world.targets("p_0001", YESTERDAY) if _valid("Target", t)]
    assert sorted(t["id"] for t in anomalies) == ["t_0001u000001", "t_0001u000001", "t_0001u000121"]


# ---------------------------------------------------------------------- config and CLI flags
def test_config_refuses_impossible_values():
    for bad in (
        {"rate_429": 1.0},
        {"rate_5xx": -0.1},
        {"malformed_rate": 2},
        {"partners": -1},
        {"token_lifetime_s": 0},
        {"latency_ms": -1},
        {"bullphish_token": ""},
    ):
        with pytest.raises(ValueError):
            SandboxConfig(**bad)


def test_cli_flags_cover_every_knob():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args([])) == SandboxConfig()
    argv = (
        "--seed 3 --partners 20 --organizations-per-partner 4 --targets-per-organization 9 "
        "--short-pages --rate-429 0.1 --rate-5xx 0.2 --rate-lost-response 0.3 --latency-ms 5 "
        "--token-lifetime 60 --malformed-rate 0.05 --today 2025-01-31 "
        "--bullphish-port 0 --kaseyaone-port 9000"
    )
    ns = parser.parse_args(argv.split(" "))
    assert config_from_args(ns) == SandboxConfig(
        seed=3,
        partners=20,
        organizations_per_partner=4,
        targets_per_organization=9,
        short_pages=True,
        rate_429=0.1,
        rate_5xx=0.2,
        rate_lost_response=0.3,
        latency_ms=5.0,
        token_lifetime_s=60,
        malformed_rate=0.05,
        today=dt.date(2025, 1, 31),
    )
    assert (ns.bullphish_port, ns.kaseyaone_port) == (0, 9000)
    help_text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.dest
    assert "--rate-lost-response" in help_text


@pytest.mark.parametrize(
    "argv",
    [
        "--rate-429 1",
        "--rate-5xx x",
        "--partners -2",
        "--token-lifetime 0",
        "--today 2025-13-01",
        "--bullphish-port 70000",
        "--malformed-rate 1.5",
    ],
)
def test_cli_flags_refuse_bad_values(argv, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv.split())
    assert exit_info.value.code == 2
