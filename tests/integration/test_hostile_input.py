"""Hostile input beyond the contract, property-based (hypothesis): huge strings, wrong types,
nulls, unicode, SQL-looking names, duplicate ids across pages, a page of 100,000 records,
bodies that are not JSON. Never a crash, never a silent drop: every record is loaded or
quarantined with a reason, or the partner-date fails with a clear reason.

The end-to-end property serves generated records over loopback HTTP (a small server that
serves whatever the example says), through the real client, validation, raw snapshot and
billing rules, and compares the billed metrics with tests/oracle.py, which applies
docs/billing-rules.md's rules to the same records independently.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from oracle import expected_billing

from bullphish_billing import billing_rules
from bullphish_billing.clients import (
    BullPhishClient,
    ContractViolationError,
    FinalApiError,
    KaseyaOneClient,
    RetryPolicy,
)
from bullphish_billing.extract import extract_partner_list, extract_partners
from bullphish_billing.validation import ORGANIZATION, PARTNER, TARGET, validate_records
from bullphish_billing.warehouse.db import open_warehouse
from bullphish_billing.warehouse.raw import WarehouseSink

DAY = dt.date.today() - dt.timedelta(days=3)
TOKEN = "hostile-token"
PARTNER_ID = "p_1"
PII = "piiMARK"  # in every target's personal fields, and nowhere else
FAST = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02, request_deadline_s=20)
EXAMPLES = settings(
    max_examples=20,
    deadline=None,
    database=None,
    # each example costs HTTP and a warehouse: report the failing example as found, unshrunk,
    # rather than spend minutes shrinking it
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ----------------------------------------------------------- a server that serves anything
def wire(value: object) -> bytes:
    """JSON as a server may send it: integers of any size included (orjson would refuse to
    write those; it reads them, as floats)."""
    return json.dumps(value, ensure_ascii=False).encode()


class HostileServer:
    """Serves, per path, a list of page bodies (bytes) chained by cursors `c1`, `c2`, ...;
    the bodies are exactly what the test says, valid or not. POST answers `answer`."""

    def __init__(self) -> None:
        self.pages: dict[str, list[bytes]] = {}
        self.answer: bytes = b"{}"
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                pages = server.pages.get(url.path)
                if pages is None:
                    self._send(404, b'{"error": {"code": "not_found", "message": "no"}}')
                    return
                cursor = parse_qs(url.query).get("cursor", ["c0"])[0]
                number = cursor[1:]
                if not (cursor.startswith("c") and number.isdigit() and int(number) < len(pages)):
                    self._send(400, b'{"error": {"code": "invalid_cursor", "message": "no"}}')
                    return
                self._send(200, pages[int(number)])

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/oauth/token"):
                    token = b'{"access_token": "k1", "token_type": "Bearer", "expires_in": 60}'
                    self._send(200, token)
                    return
                self._send(200, server.answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def serve_list(self, path: str, pages: list[list]) -> None:
        """Serve these pages of records as one cursor-paginated list."""
        bodies = []
        for i, records in enumerate(pages):
            cursor = f"c{i + 1}" if i + 1 < len(pages) else None
            bodies.append(wire({"data": records, "next_cursor": cursor}))
        self.pages[path] = bodies

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[HostileServer]:
    running = HostileServer()
    yield running
    running.close()


# ---------------------------------------------------------------------- hostile values
HUGE = "Ω" * 300_000
SQLISH = [
    "'; DROP TABLE raw.targets; --",
    "o_1' OR '1'='1",
    "Robert'); DELETE FROM ops.outbox;--",
    "$1",
    "?",
    '"; COMMIT; --',
    "\\x00",
]
weird_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(SQLISH),
    st.just(""),
    st.just(HUGE),
    st.just("a\x00b"),
    st.just("\u202e\u200b\ufeff"),
    st.just("😀" * 50),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    weird_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
TIMESTAMPS = [
    "2025-01-31T23:59:59Z",
    "2026-02-01T00:00:00+00:00",
    "2025-06-30T12:00:00.123456Z",
    "2025-06-30T12:00:00-07:00",
]
NOT_TIMESTAMPS = ["yesterday", "", "2025-13-01T00:00:00Z", "2025-02-30T00:00:00Z", "T", HUGE]


ABSENT = object()


def spoiled(valid: st.SearchStrategy, hostile: dict[str, st.SearchStrategy]):
    """A valid record in which none (most often), one or two fields are replaced by a hostile
    value or removed. `hostile` maps a field path ("modules.phishing") to hostile values."""

    @st.composite
    def build(draw):
        rec = copy.deepcopy(draw(valid))
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
            path = draw(st.sampled_from(sorted(hostile)))
            *parents, last = path.split(".")
            parent = rec
            for key in parents:
                parent = parent.get(key) if isinstance(parent, dict) else None
            if not isinstance(parent, dict):
                continue
            value = draw(st.one_of(hostile[path], st.just(ABSENT)))
            if value is ABSENT:
                parent.pop(last, None)
            else:
                parent[last] = value
        return rec

    return build()


ORG_IDS = [f"o_{i}" for i in range(1, 6)]
TARGET_IDS = [f"t_{i}" for i in range(1, 16)]
bad_ids = st.one_of(json_values, st.sampled_from(["o_", "o_1\n", "x_1", "o_ü", "O_1", "o_1 "]))
not_boolean = st.sampled_from([0, 1, "true", "false", None, [], {}])

organizations = spoiled(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(ORG_IDS),
            "partner_id": st.just(PARTNER_ID),
            "name": st.one_of(st.text(min_size=1, max_size=200), st.sampled_from(SQLISH)),
            "parent_id": st.one_of(st.none(), st.sampled_from(ORG_IDS), weird_text),
            "status": st.sampled_from(["active", "active", "archived"]),
            "modules": st.fixed_dictionaries(
                {"training_awareness": st.booleans(), "phishing": st.booleans()}
            ),
            "created_at": st.sampled_from(TIMESTAMPS),
        },
        optional={"extra": json_values},  # fields the contract does not list are ignored
    ),
    {
        "id": bad_ids,
        "partner_id": st.one_of(st.just("p_2"), json_values),
        "name": weird_text,
        "parent_id": json_values,
        "status": weird_text,
        "modules": json_values,
        "modules.training_awareness": not_boolean,
        "modules.phishing": not_boolean,
        "created_at": st.one_of(st.sampled_from(NOT_TIMESTAMPS), json_values),
    },
)

personal = st.one_of(
    st.text(max_size=20).map(lambda t: f"{PII}.{t}@example-msp.test"),
    st.just(f"{PII} Jane O'Brien; DROP TABLE raw.targets"),
)
personal_hostile = st.one_of(
    st.lists(st.just(f"{PII}@x.test"), max_size=2),
    st.dictionaries(st.just("email"), st.just(f"{PII}@x.test"), max_size=1),
    st.integers(),
    st.booleans(),
)
targets = spoiled(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(TARGET_IDS),
            "organization_id": st.sampled_from([*ORG_IDS, *ORG_IDS, "o_99", "p_1", "o_1; --"]),
            "email": personal,
            "status": st.sampled_from(["active", "inactive"]),
            "updated_at": st.sampled_from(TIMESTAMPS),
        },
        optional={
            "first_name": st.one_of(st.none(), personal),
            "last_name": st.one_of(st.none(), personal),
        },
    ),
    {
        "id": bad_ids,
        "organization_id": json_values,
        "email": st.one_of(st.none(), personal_hostile),
        "first_name": personal_hostile,
        "last_name": personal_hostile,
        "status": weird_text,
        "updated_at": st.one_of(st.sampled_from(NOT_TIMESTAMPS), json_values),
    },
)
not_objects = st.one_of(json_scalars, st.lists(json_scalars, max_size=2))


def with_duplicates(records: st.SearchStrategy) -> st.SearchStrategy:
    """A list of records, a few JSON values that are not objects among them, and some records
    again, identical, further on (so on another page, often)."""

    @st.composite
    def build(draw):
        items = draw(st.lists(records, max_size=25))
        for _ in range(draw(st.integers(0, 2))):
            items.insert(draw(st.integers(0, len(items))), draw(not_objects))
        for _ in range(draw(st.integers(0, 3))):
            if items:
                items.append(items[draw(st.integers(0, len(items) - 1))])
        return items

    return build()


def paged(items: list, cuts: list[int]) -> list[list]:
    """Split `items` into pages at the given positions (empty pages included)."""
    bounds = sorted(min(c, len(items)) for c in cuts)
    pages, start = [], 0
    for bound in bounds:
        pages.append(items[start:bound])
        start = bound
    pages.append(items[start:])
    return pages


def json_roundtrip(items: list) -> list:
    """What a client decodes: the records as they come off the wire."""
    return orjson.loads(wire(items))


# ------------------------------------------------- validation: everything accounted for
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    entity_records=st.one_of(
        st.tuples(st.just(ORGANIZATION), with_duplicates(organizations)),
        st.tuples(st.just(TARGET), with_duplicates(targets)),
        st.tuples(st.just(PARTNER), st.lists(st.one_of(json_values, not_objects), max_size=10)),
    )
)
def test_validation_loads_or_quarantines_every_record_with_a_reason(entity_records):
    entity, raw = entity_records
    records = json_roundtrip(raw)
    positions = [(i // 7, i % 7) for i in range(len(records))]
    results = [
        validate_records(entity, records, positions, expected_partner_id=PARTNER_ID, exact=exact)
        for exact in (False, True)
    ]
    fast, exact = results
    for batch in results:
        good = set(zip(batch.good["page_no"], batch.good["page_row"], strict=True))
        bad = set(zip(batch.bad["page_no"], batch.bad["page_row"], strict=True))
        assert len(good) == len(batch.good) and len(bad) == len(batch.bad)
        assert good | bad == set(positions) and not good & bad  # none dropped, none twice
        assert all(isinstance(r, str) and r for r in batch.bad["reason"])
        # nothing personal leaves validation: not in loaded columns, not in reasons
        assert PII not in batch.good.to_csv() + batch.bad.to_csv()
        ids = batch.good["id"].astype(str)
        assert ids.str.fullmatch(entity.id_pattern.strip("^$")).all()
    # the fast path and the exact path agree on what is good
    assert sorted(fast.good["page_row"] + 100 * fast.good["page_no"]) == sorted(
        exact.good["page_row"] + 100 * exact.good["page_no"]
    )


# ---------------------------------- end to end: pages over HTTP, warehouse, billing rules
class OneDayWorld:
    """The oracle's view of what the hostile server served (World's interface)."""

    def __init__(self, partner: dict, orgs: list, tgts: list) -> None:
        self._p, self._o, self._t = partner, orgs, tgts

    def partners(self, day: dt.date) -> list:
        return [self._p]

    def organizations(self, pid: str, day: dt.date) -> list:
        return self._o

    def targets(self, pid: str, day: dt.date) -> list:
        return self._t


def eligible_partner(subscription: str) -> dict:
    return {
        "id": PARTNER_ID,
        "name": "Hostile MSP",
        "subscription_type": subscription,
        "kaseyaone": {"activated": True, "psa": "autotask", "unified_login_enabled": True},
        "updated_at": "2025-01-01T00:00:00Z",
    }


async def _extract(url: str, warehouse: Path, run_id: str):
    async with BullPhishClient(url, TOKEN, retry=FAST) as client:
        with open_warehouse(warehouse) as con:
            await extract_partner_list(client, con, DAY, run_id)
            billing_rules.decide_partners(con, DAY, run_id)
            sink = WarehouseSink(con, DAY, run_id)
            return await extract_partners(client, sink, DAY, [PARTNER_ID])


def text_columns(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    return con.execute(
        "SELECT schema_name, table_name, column_name FROM duckdb_columns() "
        "WHERE database_name = current_database() AND data_type IN ('VARCHAR', 'JSON')"
    ).fetchall()


@EXAMPLES
@given(
    subscription=st.sampled_from(["per_user", "per_organization"]),
    orgs=with_duplicates(organizations),
    tgts=with_duplicates(targets),
    org_cuts=st.lists(st.integers(0, 30), max_size=3),
    target_cuts=st.lists(st.integers(0, 30), max_size=4),
)
def test_hostile_pages_are_billed_as_the_rules_say_and_every_record_is_accounted_for(
    server, tmp_path_factory, subscription, orgs, tgts, org_cuts, target_cuts
):
    orgs, tgts = json_roundtrip(orgs), json_roundtrip(tgts)
    partner = eligible_partner(subscription)
    server.serve_list("/v1/partners", [[partner]])
    server.serve_list(f"/v1/partners/{PARTNER_ID}/organizations", paged(orgs, org_cuts))
    server.serve_list(f"/v1/partners/{PARTNER_ID}/targets", paged(tgts, target_cuts))
    warehouse = tmp_path_factory.mktemp("hostile") / "warehouse.duckdb"

    results = asyncio.run(_extract(server.url, warehouse, "hostile-run"))
    assert results[PARTNER_ID].error is None
    assert results[PARTNER_ID].organizations_received == len(orgs)
    assert results[PARTNER_ID].targets_received == len(tgts)
    with open_warehouse(warehouse) as con:
        evaluation = billing_rules.evaluate(
            con, DAY, [PARTNER_ID], hold_threshold=1.0, run_id="hostile-run"
        )[PARTNER_ID]
        billed = {
            (p, o, t): u
            for p, o, t, u in con.execute(
                "SELECT partner_id, organization_id, billing_type, units FROM billing_metrics"
            ).fetchall()
        }
        # every record received is in raw.* or in the quarantine, with its position
        for entity, table, received in (
            ("organization", "raw.organizations", orgs),
            ("target", "raw.targets", tgts),
        ):
            kept = con.execute(
                f"SELECT count(*) FROM {table} WHERE partner_id = ?", [PARTNER_ID]
            ).fetchall()[0][0]
            quarantined = con.execute(
                "SELECT count(*) FROM ops.quarantine WHERE entity = ? AND stage = 'record'",
                [entity],
            ).fetchall()[0][0]
            assert kept + quarantined == len(received), entity
        assert con.execute("SELECT count(*) FROM ops.quarantine WHERE reason = ''").fetchall() == [
            (0,)
        ]
        # no personal field of any target reached any text column of any table
        for schema, table, column in text_columns(con):
            leaked = con.execute(
                f'SELECT count(*) FROM {schema}.{table} WHERE contains("{column}"::VARCHAR, ?)',
                [PII],
            ).fetchall()[0][0]
            assert leaked == 0, f"{schema}.{table}.{column}"

    expected = expected_billing(OneDayWorld(partner, orgs, tgts), DAY, threshold=1.0)
    assert not evaluation.held
    assert billed == expected.metrics


# ------------------------------------------------------------- bodies that are not pages
@EXAMPLES
@given(
    body=st.one_of(
        st.binary(max_size=200),
        json_values.map(wire),
        st.fixed_dictionaries(
            {"data": json_values, "next_cursor": st.one_of(json_scalars, st.just(None))}
        ).map(wire),
        st.just(b'{"data": [], "next_cursor": null'),  # cut short
        st.just(b'{"data": [{"id": 123456789012345678901234567890}], "next_cursor": null}'),
        st.just(b'{"data": [1e400], "next_cursor": null}'),
        st.just(b'{"data": ["\\ud800"], "next_cursor": null}'),
        st.just(b"\xff\xfe{}"),
    )
)
@example(body=wire({"data": [], "next_cursor": HUGE}))  # too long for any URL
@example(body=b'{"data": [], "next_cursor": null')  # cut short
def test_a_page_body_is_either_a_page_or_a_contract_violation(server, body):
    server.pages["/v1/partners"] = [body]

    async def walk() -> list:
        async with BullPhishClient(server.url, TOKEN, retry=FAST) as client:
            return [page async for page in client.iter_partners(DAY)]

    try:
        pages = asyncio.run(walk())
    except FinalApiError as exc:
        # a body that breaks the contract, or a cursor that cannot be sent or is refused (400)
        assert str(exc).startswith("bullphish GET /v1/partners failed")
        assert "\n" not in str(exc)
        return
    decoded = orjson.loads(body)
    assert len(pages) == 1 and pages[0].records == decoded["data"]
    assert decoded["next_cursor"] is None


# ------------------------------------------------------------ a page of 100,000 records
def test_a_single_page_of_100000_records_is_loaded_or_quarantined_entirely(server, tmp_path):
    n = 100_000
    tgts = [
        {
            "id": f"t_{i}",
            "organization_id": "o_1",
            "email": f"{PII}{i}@example-msp.test",
            "status": "active" if i % 3 else "inactive",
            "updated_at": "2025-01-31T23:59:59Z",
        }
        for i in range(n)
    ]
    for i in range(0, n, 997):  # about 0.1% broken in various ways
        tgts[i] = [
            {**tgts[i], "status": "deleted"},
            {k: v for k, v in tgts[i].items() if k != "updated_at"},
            "not an object",
            {**tgts[i], "id": 5},
        ][i % 4]
    org = {
        "id": "o_1",
        "partner_id": PARTNER_ID,
        "name": "Big",
        "parent_id": None,
        "status": "active",
        "modules": {"training_awareness": True, "phishing": False},
        "created_at": "2024-01-01T00:00:00Z",
    }
    server.serve_list("/v1/partners", [[eligible_partner("per_user")]])
    server.serve_list(f"/v1/partners/{PARTNER_ID}/organizations", [[org]])
    server.serve_list(f"/v1/partners/{PARTNER_ID}/targets", [tgts])  # one page, limit ignored
    warehouse = tmp_path / "warehouse.duckdb"
    results = asyncio.run(_extract(server.url, warehouse, "big-run"))
    assert results[PARTNER_ID].error is None and results[PARTNER_ID].targets_received == n
    with open_warehouse(warehouse) as con:
        evaluation = billing_rules.evaluate(
            con, DAY, [PARTNER_ID], hold_threshold=0.01, run_id="big-run"
        )[PARTNER_ID]
        kept = con.execute("SELECT count(*) FROM raw.targets").fetchall()[0][0]
        quarantined = con.execute(
            "SELECT count(*) FROM ops.quarantine WHERE entity = 'target'"
        ).fetchall()[0][0]
        units = dict(con.execute("SELECT billing_type, units FROM billing_metrics").fetchall())
    broken = set(range(0, n, 997))
    assert (kept, quarantined) == (n - len(broken), len(broken))
    assert not evaluation.held
    active = sum(1 for i in range(n) if i % 3 and i not in broken)
    assert units == {
        "bullphish_id.training_awareness.per_user": active,
        "bullphish_id.phishing.per_user": 0,
    }


# ------------------------------------------------- KaseyaOne answers that break the contract
@EXAMPLES
@given(
    answer=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {
                "accepted": st.one_of(st.integers(-2, 5), json_scalars),
                "rejected": st.one_of(
                    st.lists(
                        st.fixed_dictionaries(
                            {
                                "index": st.one_of(st.integers(-1, 5), json_scalars),
                                "reason": st.one_of(
                                    st.sampled_from(["invalid_units", "organization_not_linked"]),
                                    json_scalars,
                                ),
                            }
                        ),
                        max_size=4,
                    ),
                    json_values,
                ),
                "replayed": st.one_of(st.booleans(), json_scalars),
            }
        ),
    )
)
def test_a_kaseyaone_answer_is_recorded_only_if_every_rejection_names_a_metric(server, answer):
    """A rejection naming no metric of the batch would be dropped silently: it breaks the
    contract instead, and the batch stays unacknowledged."""
    server.answer = wire(answer)
    batch = {
        "module": "bullphish-id",
        "partner_id": PARTNER_ID,
        "usage_date": DAY.isoformat(),
        "metrics": [
            {"organization_id": f"o_{i}", "billing_type": "bullphish_id.phishing.per_user",
             "units": i}
            for i in range(3)
        ],
    }  # fmt: skip

    async def send():
        async with KaseyaOneClient(server.url, "client", "secret", retry=FAST) as client:
            return await client.report_usage(batch, "bpb1-hostile-key")

    try:
        result = asyncio.run(send())
    except FinalApiError as exc:
        assert isinstance(exc, ContractViolationError), exc
        return
    indices = [i for i, _ in result.rejected]
    assert all(0 <= i < 3 for i in indices) and len(set(indices)) == len(indices)
    assert isinstance(result.accepted, int) and isinstance(result.replayed, bool)
