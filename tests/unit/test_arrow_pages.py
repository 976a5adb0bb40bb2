"""The two ways of decoding a target page agree: the exact path (orjson, `parse_page`,
`validate_records`) and the fast path (`ArrowPageDecoder`, `validate_table`).

The decoder may always decline a page (None: orjson decides); what it must never do is answer
differently from orjson. So, for generated pages mixing well-formed and hostile records:
- when the decoder returns a table, `validate_table` gives the same `good` frame (values and
  dtypes: it is inserted into DuckDB as is) and the same `bad` frame as `validate_records` on
  the records orjson reads;
- it never returns a table for a page with a record that is not an object, or with a required
  field absent or null (Arrow cannot tell the two apart; the exact path words them differently);
- it does return a table for a page whose every declared field has its JSON type, so that a
  decoder that always declined would be noticed;
- it never returns a table for a body orjson refuses (follow_cursor would otherwise load a page
  that the orjson path fails as "not valid JSON").

Bodies orjson refuses (invalid UTF-8, NaN, a byte order mark, deep nesting) and a body starting
with `null` (which made pyarrow 26's reader crash the process) are declined by the decoder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pandas.testing import assert_frame_equal

from bullphish_billing.clients import ContractViolationError
from bullphish_billing.clients.arrow_pages import ArrowPage, ArrowPageDecoder
from bullphish_billing.clients.pages import Page, decode_json, follow_cursor
from bullphish_billing.extract import _TARGET_PAGES
from bullphish_billing.validation import (
    TARGET,
    arrow_record_type,
    required_fields,
    validate_records,
    validate_table,
)

DECODER: ArrowPageDecoder = _TARGET_PAGES
FIELDS = tuple(f.column for f in TARGET.fields)
REQUIRED = ("id", "organization_id", "email", "status", "updated_at")
OPTIONAL = ("first_name", "last_name")
ROOT = Path(__file__).resolve().parents[2]
WHERE = {"api": "bullphish", "method": "GET", "path": "/v1/partners/p_1/targets"}


def record(n: int = 1, **fields: Any) -> dict[str, Any]:
    out = {
        "id": f"t_{n}",
        "organization_id": "o_1",
        "email": f"user{n}@example.com",
        "first_name": "Ada",
        "last_name": None,
        "status": "active",
        "updated_at": "2026-11-24T06:00:00Z",
    }
    out.update(fields)
    return out


def positions(n: int, page_no: int = 0) -> np.ndarray:
    return np.column_stack((np.full(n, page_no, np.int64), np.arange(n, dtype=np.int64)))


def assert_same_validation(table: pa.Table, records: list[Any], where: np.ndarray) -> None:
    """validate_table on the Arrow columns == validate_records on orjson's records, dtypes
    included."""
    fast = validate_table(TARGET, table, where)
    exact = validate_records(TARGET, records, where)
    assert_frame_equal(fast.good, exact.good, check_exact=True)
    assert_frame_equal(fast.bad, exact.bad, check_exact=True)


def test_the_extract_decoder_is_built_from_the_target_contract() -> None:
    assert DECODER.record_type == arrow_record_type(TARGET)
    assert DECODER.required == required_fields(TARGET) == REQUIRED


# ------------------------------------------------------------------------------ generators
ALNUM = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", min_size=1)
# st.text never yields lone surrogates, which neither orjson nor json.dumps+orjson would take
UNICODE = st.text(max_size=12) | st.sampled_from(
    ["", "é", "naïve", "日本語", "😀", "\u2028", "\x00", "a\nb", '"\\/', "\ufeff", "\uffff"]
)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | UNICODE
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(UNICODE, inner, max_size=3),
    max_leaves=6,
)
UPDATED_AT = st.builds(
    lambda d, fmt: d.strftime(fmt),
    st.datetimes(min_value=dt.datetime(1000, 1, 1)),
    st.sampled_from(
        [
            "%Y-%m-%dT%H:%M:%SZ",
            "%Y-%m-%dT%H:%M:%S.%fZ",
            "%Y-%m-%dT%H:%M:%S+02:00",
            "%Y-%m-%dT%H:%M:%S-05:30",
        ]
    ),
)
BAD_UPDATED_AT = st.sampled_from(
    [
        "yesterday",
        "2024-13-45T25:00:00Z",
        "2026-11-24",
        "2026-11-24T06:00:00",  # no zone
        "2026-02-30T06:00:00Z",
        "",
        " 2026-11-24T06:00:00Z",
        "2026-11-24T06:00:00Z\n",
    ]
)
BAD_ID = st.sampled_from(["", "t_", "T_1", "t-1", "t_é", "t_1 ", "t_1\n", "x_1", "t_" + "a" * 41])


@st.composite
def good_records(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": "t_" + draw(ALNUM.filter(lambda s: len(s) <= 40)),
        "organization_id": "o_" + draw(ALNUM.filter(lambda s: len(s) <= 40)),
        "email": draw(st.emails() | UNICODE),
        "status": draw(st.sampled_from(["active", "inactive"])),
        "updated_at": draw(UPDATED_AT),
    }
    for name in OPTIONAL:
        choice = draw(st.sampled_from(["absent", "null", "value"]))
        if choice != "absent":
            out[name] = None if choice == "null" else draw(UNICODE)
    keys = list(out)
    return {k: out[k] for k in draw(st.permutations(keys))}


MUTATIONS = (
    "absent",
    "null",
    "number",
    "bool",
    "object",
    "array",
    "unicode",
    "bad_status",
    "bad_id",
    "bad_updated_at",
    "extra",
)


@st.composite
def hostile_records(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:  # a record that is not an object
        return draw(
            st.none()
            | st.integers(-5, 5)
            | st.floats(allow_nan=False, allow_infinity=False)  # json.dumps writes Infinity,
            | UNICODE  # which no JSON reader takes: such bodies have tests of their own below
            | st.lists(JSON_SCALARS, max_size=2)
        )
    out = draw(good_records())
    for _ in range(draw(st.integers(1, 2))):
        mutation = draw(st.sampled_from(MUTATIONS))
        name = draw(st.sampled_from(FIELDS))
        if mutation == "absent":
            out.pop(name, None)
        elif mutation == "null":
            out[name] = None
        elif mutation == "number":
            out[name] = draw(
                st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
            )
        elif mutation == "bool":
            out[name] = draw(st.booleans())
        elif mutation == "object":
            out[name] = draw(st.dictionaries(UNICODE, JSON_SCALARS, max_size=2))
        elif mutation == "array":
            out[name] = draw(st.lists(JSON_SCALARS, max_size=2))
        elif mutation == "unicode":
            out[name] = draw(UNICODE)
        elif mutation == "bad_status":
            out["status"] = draw(
                st.sampled_from(["Active", "archived", "", "active ", "ACTIVE"]) | UNICODE
            )
        elif mutation == "bad_id":
            out["id"] = draw(BAD_ID)
        elif mutation == "bad_updated_at":
            out["updated_at"] = draw(BAD_UPDATED_AT)
        else:
            extra = draw(UNICODE.filter(lambda k: k not in FIELDS))
            out[extra] = draw(JSON_VALUES)
    return out


@st.composite
def pages(draw: st.DrawFn, *, hostile: bool = True) -> dict[str, Any]:
    kinds = good_records() | hostile_records() if hostile else good_records()
    page: dict[str, Any] = {
        "data": draw(st.lists(kinds, max_size=8)),
        "next_cursor": draw(st.none() | UNICODE),
    }
    if draw(st.booleans()):
        page = {"next_cursor": page["next_cursor"], "data": page["data"]}
    if hostile and draw(st.integers(0, 4)) == 0:
        page[draw(UNICODE.filter(lambda k: k not in page))] = draw(JSON_VALUES)
    return page


def serialize(page: dict[str, Any], how: str) -> bytes:
    if how == "orjson":
        return orjson.dumps(page)
    if how == "pretty":
        return json.dumps(page, indent=2).encode()
    return json.dumps(page, ensure_ascii=False).encode()  # raw UTF-8, not \u escapes


SERIALIZERS = st.sampled_from(["orjson", "pretty", "raw-utf8"])


def declines_by_contract(records: list[Any]) -> bool:
    """The decoder must decline: a record that is no object, or a required field absent or
    null."""
    return any(
        type(r) is not dict or any(r.get(name) is None for name in REQUIRED) for r in records
    )


def all_typed(records: list[Any]) -> bool:
    """Every record an object whose declared fields all have their JSON type (optional ones
    may be absent or null): the decoder has no reason to decline."""
    return all(
        type(r) is dict
        and all(type(r.get(name)) is str for name in REQUIRED)
        and all(r.get(name) is None or type(r[name]) is str for name in OPTIONAL)
        for r in records
    )


def flat(body: bytes, n_records: int) -> bool:
    """Not a thousand braces or brackets besides the records' (the decoder leaves what may be
    nested deeper than orjson reads to orjson), and no text that could be a NaN or Infinity
    token."""
    nested = body.count(b"{") + body.count(b"[") - n_records > 1000
    return not nested and not re.search(rb"[:\[,]\s*-?(?:NaN|Infinity)", body)


# ------------------------------------------------------------------------------ the property
@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(page=pages(), how=SERIALIZERS, page_no=st.integers(0, 5))
def test_the_fast_path_agrees_with_orjson_or_declines(
    page: dict[str, Any], how: str, page_no: int
) -> None:
    body = serialize(page, how)
    records = orjson.loads(body)["data"]
    fast = DECODER(body)
    if declines_by_contract(records):
        assert fast is None, "a table for a page with a non-object record or a missing field"
    if all_typed(records) and flat(body, len(records)):
        assert fast is not None, "declined a page whose every field has its JSON type"
    event("fast path" if fast is not None else "orjson decides")
    if fast is None:
        return
    assert fast.next_cursor == page["next_cursor"]
    assert fast.table.num_rows == len(records)
    assert fast.table.schema == pa.schema(list(DECODER.record_type))
    assert_same_validation(fast.table, records, positions(len(records), page_no))


@settings(max_examples=50, deadline=None, database=None)
@given(page=pages(hostile=False), how=SERIALIZERS)
def test_clean_pages_take_the_fast_path(page: dict[str, Any], how: str) -> None:
    fast = DECODER(serialize(page, how))
    assert fast is not None
    assert fast.table.num_rows == len(page["data"])
    assert fast.next_cursor == page["next_cursor"]
    batch = validate_table(TARGET, fast.table, positions(len(page["data"])))
    assert len(batch.good) == len(page["data"]) and batch.bad.empty


def test_a_clean_page_decodes_to_its_columns() -> None:
    data = [record(1), record(2, first_name=None, status="inactive"), record(3)]
    del data[2]["first_name"], data[2]["last_name"]
    fast = DECODER(orjson.dumps({"data": data, "next_cursor": "c2"}))
    assert isinstance(fast, ArrowPage)
    assert fast.next_cursor == "c2"
    assert fast.table.num_rows == 3
    assert fast.table.column("id").to_pylist() == ["t_1", "t_2", "t_3"]
    assert fast.table.column("first_name").to_pylist() == ["Ada", None, None]
    assert_same_validation(fast.table, data, positions(3))


def test_a_page_with_quarantined_records_agrees_on_every_reason() -> None:
    data = [
        record(1),
        record(2, status="archived"),
        record(3, id="t_3!"),
        record(4, updated_at="yesterday"),
        record(5, updated_at="2024-13-45T25:00:00Z"),
        record(6, extra={"nested": [1, None, "x"]}),
    ]
    body = json.dumps({"data": data, "next_cursor": None}, indent=2).encode()
    fast = DECODER(body)
    assert fast is not None and fast.next_cursor is None
    assert_same_validation(fast.table, orjson.loads(body)["data"], positions(6, 3))
    assert len(validate_table(TARGET, fast.table, positions(6)).bad) == 4


def test_escaped_keys_and_values_agree() -> None:
    body = (
        b'{"\\u0064ata": [{"\\u0069d": "t_1", "organization_id": "o_\\u0031", "email": "e", '
        b'"status": "act\\u0069ve", "updated_at": "2026-11-24T06:00:00\\u005a", '
        b'"first_name": "\\ud83d\\ude00"}], "next_\\u0063ursor": "c\\u00e9"}'
    )
    fast = DECODER(body)
    assert fast is not None and fast.next_cursor == "c\u00e9"
    assert fast.table.column("first_name").to_pylist() == ["\U0001f600"]
    assert_same_validation(fast.table, orjson.loads(body)["data"], positions(1))


@pytest.mark.parametrize(
    "data",
    [
        [record(1), None],
        [record(1), 3],
        [record(1), "t_2"],
        [record(1), []],
        *([record(1), {k: v for k, v in record(2).items() if k != name}] for name in REQUIRED),
        *([record(1), record(2, **{name: None})] for name in REQUIRED),
    ],
)
def test_a_non_object_record_or_a_missing_required_field_is_left_to_orjson(
    data: list[Any],
) -> None:
    assert DECODER(orjson.dumps({"data": data, "next_cursor": "c"})) is None


# ------------------------------------------------------------------------------ body shapes
CLEAN = orjson.dumps({"data": [record(1)], "next_cursor": "c"})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"data": null, "next_cursor": "c"}', id="data-null"),
        pytest.param(b'{"next_cursor": "c"}', id="data-missing"),
        pytest.param(b'{"data": {}, "next_cursor": "c"}', id="data-object"),
        pytest.param(b'{"data": "x", "next_cursor": "c"}', id="data-string"),
        pytest.param(b'{"data": [], "next_cursor": 5}', id="next-cursor-number"),
        pytest.param(b'{"data": [], "next_cursor": true}', id="next-cursor-bool"),
        pytest.param(b'{"data": [], "next_cursor": {}}', id="next-cursor-object"),
        pytest.param(CLEAN + CLEAN, id="two-objects"),
        pytest.param(CLEAN + b"\n" + CLEAN, id="two-objects-two-lines"),
        pytest.param(b"", id="empty"),
        pytest.param(b" \n\t", id="whitespace"),
        pytest.param(b"true", id="true"),
        pytest.param(b"[]", id="empty-array"),
        pytest.param(b"[" + CLEAN + b"]", id="array"),
        pytest.param(CLEAN + b" x", id="trailing-garbage"),
        pytest.param(CLEAN + b"\x00", id="trailing-nul"),
        pytest.param(CLEAN[:-1], id="truncated"),
        pytest.param('{"data": [], "next_cursor": "c"}'.encode("utf-16"), id="utf-16"),
        pytest.param(b'{"data": [], "data": [], "next_cursor": "c"}', id="duplicate-data"),
        pytest.param(
            orjson.dumps({"data": [record(1)], "next_cursor": "c"}).replace(
                b'"status":"active"', b'"status":"active","status":5'
            ),
            id="duplicate-field-in-record",
        ),
        pytest.param(
            orjson.dumps({"data": [record(1)], "next_cursor": "c"}).replace(
                b'"o_1"', b'"o_\\ud800"'
            ),
            id="lone-surrogate-escape",
        ),
    ],
)
def test_bodies_the_decoder_leaves_to_orjson(body: bytes) -> None:
    assert DECODER(body) is None


# Bodies orjson refuses ("not valid JSON": the partner-date fails), which the decoder reads.
BAD_UTF8_CURSOR = b'{"data": [], "next_cursor": "c\xff"}'
BAD_UTF8_EMAIL = CLEAN.replace(b"user1@example.com", b"user1@\xffexample.com")
BAD_UTF8_ORG = CLEAN.replace(b'"o_1"', b'"o_\xff"')
BAD_UTF8_ID = CLEAN.replace(b'"t_1"', b'"t_\xff"')
BAD_UTF8_EXTRA = CLEAN.replace(b'"id"', b'"x":"\xc0\xaf","id"')  # overlong encoding
ENCODED_SURROGATE = CLEAN.replace(b'"id"', b'"x":"\xed\xa0\x80","id"')  # CESU-style U+D800
NAN_EXTRA = CLEAN.replace(b'"id"', b'"x":NaN,"id"')
INFINITY_TOP = CLEAN[:-1] + b',"x":-Infinity}'
BOM = b"\xef\xbb\xbf" + CLEAN
DEEP = CLEAN.replace(b'"id"', b'"x":' + b"[" * 1100 + b"]" * 1100 + b',"id"')
ORJSON_REFUSES = [
    pytest.param(BAD_UTF8_CURSOR, id="invalid-utf8-next-cursor"),
    *(
        pytest.param(body, id=name)
        for name, body in [
            ("invalid-utf8-email", BAD_UTF8_EMAIL),
            ("invalid-utf8-organization-id", BAD_UTF8_ORG),
            ("invalid-utf8-id", BAD_UTF8_ID),
            ("overlong-utf8-unknown-field", BAD_UTF8_EXTRA),
            ("utf8-encoded-surrogate-unknown-field", ENCODED_SURROGATE),
            ("nan-unknown-field", NAN_EXTRA),
            ("infinity-top-level-unknown-key", INFINITY_TOP),
            ("utf8-bom", BOM),
            ("nesting-deeper-than-orjson-allows", DEEP),
        ]
    ),
    pytest.param(CLEAN.replace(b'"id"', b'"x":inf,"id"'), id="inf-unknown-field"),
    pytest.param(CLEAN.replace(b'"id"', b'"x":01,"id"'), id="leading-zero-unknown-field"),
    pytest.param(CLEAN.replace(b'"id"', b'"x":[1,],"id"'), id="trailing-comma-unknown-field"),
    pytest.param(CLEAN.replace(b'"id"', b'"x":"a\x01b","id"'), id="raw-control-char"),
    pytest.param(CLEAN.replace(b'"id"', b'"x":"\\q","id"'), id="bad-escape"),
    pytest.param(CLEAN.replace(b'"id"', b'"x":"\\udc00","id"'), id="lone-low-surrogate"),
]


@pytest.mark.parametrize("body", ORJSON_REFUSES)
def test_the_decoder_never_reads_a_body_orjson_refuses(body: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    assert DECODER(body) is None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"null", id="null"),
        pytest.param(b" null\n", id="null-with-whitespace"),
        pytest.param(b'null\n{"data": [], "next_cursor": "c"}', id="null-then-a-page"),
    ],
)
def test_a_body_starting_with_json_null_does_not_crash_the_process(body: bytes) -> None:
    # in a child process: in this one, the crash would end the test run
    code = (
        "import sys; from bullphish_billing.extract import _TARGET_PAGES as decode; "
        "print(decode(sys.stdin.buffer.read()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=body,
        capture_output=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert (done.returncode, done.stdout.strip()) == (0, b"None"), done.stderr[-500:]


def test_invalid_utf8_never_reaches_duckdb() -> None:
    fast = DECODER(BAD_UTF8_ORG)
    if fast is None:  # what orjson decides: the page is not valid JSON
        return
    good = validate_table(TARGET, fast.table, positions(1)).good
    con = duckdb.connect()
    con.register("good", good)
    con.execute("CREATE TABLE loaded AS SELECT * FROM good")


# ------------------------------------------------------------------------------ follow_cursor
def serve(bodies: dict[str | None, bytes]) -> Callable[[str | None], Awaitable[bytes]]:
    async def fetch(cursor: str | None) -> bytes:
        return bodies[cursor]

    return fetch


async def collect(pages_: AsyncIterator[Page]) -> list[Page]:
    return [page async for page in pages_]


async def both_paths(bodies: dict[str | None, bytes]) -> tuple[list[Page], list[Page]]:
    fast = await collect(follow_cursor(serve(bodies), **WHERE, arrow=DECODER))

    async def decoded(cursor: str | None) -> Any:
        return orjson.loads(bodies[cursor])

    exact = await collect(follow_cursor(decoded, **WHERE))
    return fast, exact


async def test_follow_cursor_yields_what_the_orjson_path_yields() -> None:
    first = [record(1), record(2, first_name="Zoë")]
    second = [record(3), record(4, status=5), None, record(5, updated_at="yesterday")]
    third = [record(6), record(7, id="bad id"), record(8, extra=[1, {"a": None}])]
    bodies = {
        None: orjson.dumps({"data": first, "next_cursor": "c1"}),
        "c1": json.dumps({"next_cursor": "c2", "data": second}, indent=2).encode(),
        "c2": json.dumps({"data": third, "next_cursor": None}, ensure_ascii=False).encode(),
    }
    fast, exact = await both_paths(bodies)
    assert [p.number for p in fast] == [p.number for p in exact] == [0, 1, 2]
    assert [len(p) for p in fast] == [len(p) for p in exact] == [2, 4, 3]
    # pages 0 and 2 read by Arrow (2 confirmed by orjson as the last), page 1 by orjson
    assert [p.table is not None for p in fast] == [True, False, True]
    assert all(p.table is None for p in exact)
    for f, e in zip(fast, exact, strict=True):
        if f.table is None:
            assert f.records == e.records
        else:
            assert f.records == []
            projected = [{name: r.get(name) for name in FIELDS} for r in e.records]
            assert f.table.to_pylist() == projected
            assert_same_validation(f.table, e.records, positions(len(f), f.number))


async def test_a_last_page_without_a_next_cursor_key_is_a_contract_violation() -> None:
    last = orjson.dumps({"data": [record(2)]})
    premise = DECODER(last)
    assert premise is not None and premise.next_cursor is None  # Arrow reads a null cursor
    bodies = {None: orjson.dumps({"data": [record(1)], "next_cursor": "c1"}), "c1": last}
    with pytest.raises(ContractViolationError, match="lacks next_cursor"):
        await collect(follow_cursor(serve(bodies), **WHERE, arrow=DECODER))


async def test_a_repeated_cursor_is_a_contract_violation_on_the_fast_path() -> None:
    bodies = {
        None: orjson.dumps({"data": [record(1)], "next_cursor": "c1"}),
        "c1": orjson.dumps({"data": [record(2)], "next_cursor": "c1"}),
    }
    with pytest.raises(ContractViolationError, match="repeats"):
        await collect(follow_cursor(serve(bodies), **WHERE, arrow=DECODER))


@pytest.mark.parametrize(
    "middle",
    [
        pytest.param(CLEAN[:-1], id="truncated"),
        pytest.param(BAD_UTF8_EMAIL, id="invalid-utf8"),
        pytest.param(NAN_EXTRA, id="nan-unknown-field"),
        pytest.param(BAD_UTF8_CURSOR, id="invalid-utf8-next-cursor"),
    ],
)
async def test_a_middle_page_orjson_refuses_fails_the_list_on_both_paths(middle: bytes) -> None:
    bodies = {
        None: orjson.dumps({"data": [record(1)], "next_cursor": "m"}),
        "m": middle,  # its next_cursor, if any, is "c"
        "c": orjson.dumps({"data": [], "next_cursor": None}),
    }

    async def decoded(cursor: str | None) -> Any:  # as send_with_retries decodes a body
        return decode_json(bodies[cursor], **WHERE)

    with pytest.raises(ContractViolationError, match="not valid JSON"):
        await collect(follow_cursor(decoded, **WHERE))
    with pytest.raises(ContractViolationError, match="not valid JSON"):
        await collect(follow_cursor(serve(bodies), **WHERE, arrow=DECODER))
