"""Decoding a target page straight into Arrow columns, in a worker thread (no Python object
per record; why: docs/decisions/2026-11-25-target-pages-as-arrow.md).

`ArrowPageDecoder` answers only for a page it can read beyond doubt (one JSON object, valid
UTF-8, flat records of the declared types, no required field absent or null); for any other
page it returns None, and the caller decodes it with orjson and the exact checks.
`tests/unit/test_arrow_pages.py` checks that both paths agree.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

_READ = pj.ReadOptions(use_threads=False, block_size=1 << 24)
_MAX_DEPTH = 1000  # below orjson's nesting limit
# NaN or Infinity where a value starts (or in a string after one of these: declined all the same)
_NOT_A_JSON_NUMBER = re.compile(rb"[:\[,]\s*-?(?:NaN|Infinity)")


@dataclass(frozen=True)
class ArrowPage:
    """A page's records as Arrow columns (one per field of the record type), and its cursor."""

    table: pa.Table
    next_cursor: str | None


class ArrowPageDecoder:
    """Decodes `{"data": [record, ...], "next_cursor": ...}` pages of flat records.

    `record_type` names each field and its JSON type (string, boolean); fields a record has
    beyond those are ignored, as the orjson path ignores them. `required` are the fields that
    must be present and non-null in every record for the page to be answered here.
    """

    def __init__(self, record_type: pa.StructType, required: Iterable[str]) -> None:
        self.record_type = record_type
        self.required = tuple(required)
        unknown = set(self.required) - {f.name for f in record_type}
        if unknown:
            raise ValueError(f"required fields not in the record type: {sorted(unknown)}")
        self._parse = pj.ParseOptions(
            explicit_schema=pa.schema(
                [("data", pa.list_(record_type)), ("next_cursor", pa.string())]
            ),
            unexpected_field_behavior="ignore",
            newlines_in_values=True,  # a pretty-printed body is still one object
        )

    def __call__(self, body: bytes) -> ArrowPage | None:
        """The page as Arrow columns, or None when orjson must decide."""
        if not _plain_json_object(body):
            return None
        try:
            page = pj.read_json(io.BytesIO(body), read_options=_READ, parse_options=self._parse)
        except (pa.ArrowException, ValueError):  # not JSON, a wrong type, ...
            return None
        if page.num_rows != 1:
            return None
        data = page.column("data")
        if data.null_count:  # no `data`, or `data: null`
            return None
        if data.num_chunks == 1:  # as read: the records as they are, no copy
            records = data.chunk(0).flatten()
        else:
            records = pc.list_flatten(data).combine_chunks()
        if records.null_count:  # a null where a record should be
            return None
        table = pa.Table.from_struct_array(records)
        if any(table.column(name).null_count for name in self.required):
            return None
        if _brackets(body) - table.num_rows > _MAX_DEPTH:
            # perhaps nested deeper than orjson reads (its limit is 1024): orjson decides
            return None
        return ArrowPage(table, page.column("next_cursor")[0].as_py())


def _plain_json_object(body: bytes) -> bool:
    """What Arrow's reader must not be given, or would read where orjson refuses: a body
    that does not start with an object (Arrow 26 crashes the process on a top-level
    `null`), invalid UTF-8 (Arrow keeps it; orjson and DuckDB refuse it), a byte order
    mark, NaN or Infinity (not JSON, though Arrow reads them)."""
    if body.lstrip(b" \t\r\n")[:1] != b"{":
        return False
    # the regex stops at every `:`, `,` and `[` (about 1 ms a page of 1,000 targets); a
    # search for `NaN` or `Inf` first leaves it only the rare page that holds them at all
    if _names_nan_or_inf(body) and _NOT_A_JSON_NUMBER.search(body):
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_N, _LOWER_A, _I, _LOWER_N, _LOWER_F = b"NaInf"


def _names_nan_or_inf(body: bytes) -> bool:
    """Whether `NaN` or `Inf` occurs anywhere in the body: numpy compares every byte with the
    GIL released, about 4 times as fast as `b"NaN" in body or b"Infinity" in body`."""
    a = np.frombuffer(body, np.uint8)
    first, second, third = a[:-2], a[1:-1], a[2:]
    nan = (first == _N) & (second == _LOWER_A) & (third == _N)
    return bool(nan.any() or ((first == _I) & (second == _LOWER_N) & (third == _LOWER_F)).any())


def _brackets(body: bytes) -> int:
    """The `{` and `[` in the body (as `body.count`, a quarter of its time)."""
    a = np.frombuffer(body, np.uint8)
    return int(np.count_nonzero(a == ord("{"))) + int(np.count_nonzero(a == ord("[")))
