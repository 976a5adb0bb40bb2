"""Per-record validation of what BullPhish ID serves, with pandera.

Each entity (partner, organization, target) is a list of `Field`s: where the field sits in the
JSON record, its type, and what the contract allows. From those fields come two pandera
schemas, and `validate_records` splits a batch of records into rows to load (typed, personal
data left behind) and quarantine rows with a reason. Nothing is dropped. Reasons name the
field and the broken rule, never the value (a value may be personal data).

Two paths give the same answers:
- the fast path, for batches whose every value already has its contract type (the usual
  case): columns become Arrow arrays in one conversion each, and pandera checks them with
  vectorised string functions;
- the exact path, when a conversion fails (a wrong type, a missing field, a record that is no
  object): object columns, and pandera checks types value by value.

Set-level rules (duplicates, unknown organizations, the hold threshold) need the whole
partner-date and live in `billing_rules`, in SQL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pyarrow
import pyarrow.compute as pc
from pandera.errors import SchemaErrors

from bullphish_billing.results import MODULES, SUBSCRIPTION_TYPES

PARTNER_ID_PATTERN = r"^p_[A-Za-z0-9]{1,40}$"
ORGANIZATION_ID_PATTERN = r"^o_[A-Za-z0-9]{1,40}$"
TARGET_ID_PATTERN = r"^t_[A-Za-z0-9]{1,40}$"

UTC_MICROS = pyarrow.timestamp("us", tz="UTC")
ARROW_TYPES = {"string": pyarrow.string(), "boolean": pyarrow.bool_(), "datetime": pyarrow.string()}


class _Missing:
    """Marks a field absent from a record (as opposed to present and null)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


@dataclass(frozen=True)
class Field:
    """One field of a record, as the contract describes it."""

    column: str
    path: tuple[str, ...]
    kind: str  # "string" | "boolean" | "datetime" (an ISO 8601 date-time string)
    nullable: bool = False  # may be null (when present)
    optional: bool = False  # may be absent: not in the contract's `required`
    pattern: str | None = None
    one_of: tuple[str, ...] | None = None
    length: tuple[int, int] | None = None
    loaded: bool = True  # kept for the warehouse; False for personal data

    @property
    def rules(self) -> list[tuple[str, Callable[[pd.Series], pd.Series]]]:
        """(name, vectorised check over a string Series) for the value rules."""
        rules = []
        if self.pattern:
            pattern = self.pattern
            rules.append((f"does not match {pattern}", lambda s: _fullmatch(s, pattern)))
        if self.one_of:
            allowed = list(self.one_of)
            shown = ", ".join(repr(v) for v in allowed) + (", null" if self.nullable else "")
            rules.append((f"not one of {shown}", lambda s: _isin(s, allowed)))
        if self.length:
            low, high = self.length
            rules.append(
                (f"not a string of {low} to {high} characters", lambda s: _length(s, low, high))
            )
        return rules


# -- vectorised helpers; each treats null as passing (nullability is checked apart) ----------


def _fullmatch(s: pd.Series, pattern: str) -> pd.Series:
    return s.str.fullmatch(pattern).fillna(True).astype(bool)


def _isin(s: pd.Series, allowed: list[str]) -> pd.Series:
    return (s.isin(allowed) | s.isna()).astype(bool)


def _length(s: pd.Series, low: int, high: int) -> pd.Series:
    return s.str.len().between(low, high).fillna(True).astype(bool)


def _type_mask(series: pd.Series, kind: type) -> pd.Series:
    """True where the value's type is exactly `kind` (so True is not an int, 1 not a bool)."""
    flags = np.fromiter((type(v) is kind for v in series), dtype=bool, count=len(series))
    return pd.Series(flags, index=series.index)


def _strings(series: pd.Series) -> pd.Series:
    """The string values as a string Series; NA where the value is not a string."""
    return series.where(_type_mask(series, str)).astype("string")


def _is_datetime(series: pd.Series) -> pd.Series:
    """ISO 8601 date-time with a time and a zone, as Arrow parses it (the fast path's rule)."""
    strings = _strings(series)
    ok = pd.Series(False, index=series.index)
    present = strings.dropna()
    if len(present):
        try:
            pc.cast(pyarrow.array(present.to_numpy(dtype=object), pyarrow.string()), UTC_MICROS)
            ok.loc[present.index] = True
        except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError):
            for index, value in present.items():
                try:
                    pc.cast(pyarrow.array([value], pyarrow.string()), UTC_MICROS)
                    ok.loc[index] = True
                except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError):
                    pass
    return ok


def _exact_column(field: Field) -> pa.Column:
    """The exact path's column: object values, types checked value by value."""
    checks = []
    if not field.optional:
        checks.append(pa.Check(lambda s: ~s.map(lambda v: v is MISSING), name="missing"))
    kind = {"string": str, "boolean": bool, "datetime": str}[field.kind]
    type_name = {"string": "a string", "boolean": "a boolean", "datetime": "a string"}[field.kind]
    suffix = " or null" if field.nullable else ""

    def typed(s: pd.Series, kind: type = kind) -> pd.Series:
        ok = _type_mask(s, kind) | s.map(lambda v: v is MISSING)
        return ok | s.isna()  # a null is judged by pandera's nullable check

    checks.append(pa.Check(typed, name=f"not {type_name}{suffix}"))
    if field.kind == "datetime":
        checks.append(
            pa.Check(
                lambda s: _is_datetime(s) | ~_type_mask(s, str),
                name="not an ISO 8601 date-time",
            )
        )
    for name, rule in field.rules:
        checks.append(pa.Check(lambda s, rule=rule: rule(_strings(s)), name=name))
    return pa.Column(object, checks, nullable=True if field.optional else field.nullable)


def _fast_column(field: Field) -> pa.Column:
    """The fast path's column: Arrow-typed values, only the value rules left to check."""
    dtype = pd.ArrowDtype(UTC_MICROS if field.kind == "datetime" else ARROW_TYPES[field.kind])
    checks = [pa.Check(rule, name=name) for name, rule in field.rules]
    return pa.Column(dtype, checks, nullable=field.nullable or field.optional)


@dataclass(frozen=True)
class Entity:
    """One kind of record: its fields, and the schemas made from them."""

    name: str
    id_pattern: str
    fields: tuple[Field, ...]

    @property
    def loaded(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.fields if f.loaded)

    def exact_schema(self) -> pa.DataFrameSchema:
        return _SCHEMAS[(self.name, "exact")]

    def fast_schema(self) -> pa.DataFrameSchema:
        return _SCHEMAS[(self.name, "fast")]


def _f(
    column: str, kind: str = "string", path: tuple[str, ...] | None = None, **rules: Any
) -> Field:
    return Field(column, path or (column,), kind, **rules)


PARTNER = Entity(
    "partner",
    PARTNER_ID_PATTERN,
    (
        _f("id", pattern=PARTNER_ID_PATTERN),
        _f("name", length=(1, 200)),
        _f("subscription_type", one_of=SUBSCRIPTION_TYPES),
        _f("kaseyaone_activated", "boolean", ("kaseyaone", "activated")),
        _f("psa", path=("kaseyaone", "psa"), nullable=True, one_of=("autotask", "bms")),
        _f("unified_login_enabled", "boolean", ("kaseyaone", "unified_login_enabled")),
        _f("updated_at", "datetime"),
    ),
)

ORGANIZATION = Entity(
    "organization",
    ORGANIZATION_ID_PATTERN,
    (
        _f("id", pattern=ORGANIZATION_ID_PATTERN),
        _f("partner_id", loaded=False),  # checked against the list's partner instead
        _f("name", length=(1, 200)),
        _f("parent_id", nullable=True),
        _f("status", one_of=("active", "archived")),
        *(_f(module, "boolean", ("modules", module)) for module in MODULES),
        _f("created_at", "datetime"),
    ),
)

TARGET = Entity(
    "target",
    TARGET_ID_PATTERN,
    (
        _f("id", pattern=TARGET_ID_PATTERN),
        _f("organization_id"),
        _f("email", loaded=False),  # personal data: validated, never kept
        _f("first_name", nullable=True, optional=True, loaded=False),
        _f("last_name", nullable=True, optional=True, loaded=False),
        _f("status", one_of=("active", "inactive")),
        _f("updated_at", "datetime"),
    ),
)

ENTITIES = {e.name: e for e in (PARTNER, ORGANIZATION, TARGET)}
_SCHEMAS = {
    (e.name, path): pa.DataFrameSchema({f.column: make(f) for f in e.fields})
    for e in ENTITIES.values()
    for path, make in (("exact", _exact_column), ("fast", _fast_column))
}

QUARANTINE_COLUMNS = ("record_id", "page_no", "page_row", "reason")

EARLIEST_REAL_DATE = pc.cast(pyarrow.scalar("0001-01-01T00:00:00Z"), UTC_MICROS)
"""A date-time before year 1 (`0000-01-01T00:00:00Z` is ISO 8601 in form) names no real day:
Python's datetime cannot hold it, and an analyst reading it from the warehouse would fail.
Such a value is stored as null and the record kept and counted, with a row of `normalized`
saying why (billing reads no date-time of a record)."""


def _empty_normalized() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in QUARANTINE_COLUMNS})


@dataclass
class ValidatedBatch:
    """A batch split in two: rows to load (typed, no personal data) and quarantine rows; and
    the loaded rows' values that were normalized (stored as null), with the reason."""

    rows: pyarrow.Table  # the rows to load: entity.loaded + page_no, page_row
    bad: pd.DataFrame  # QUARANTINE_COLUMNS
    normalized: pd.DataFrame = dataclasses.field(default_factory=_empty_normalized)

    @property
    def good(self) -> pd.DataFrame:
        """The rows to load as a DataFrame (Arrow-backed columns)."""
        return self.rows.to_pandas(types_mapper=pd.ArrowDtype)


# -- projection --------------------------------------------------------------------------------


def _values(records: Sequence[Any], path: tuple[str, ...]) -> list[Any]:
    """The field at `path` of every record; MISSING where absent."""
    if len(path) == 1:
        key = path[0]
        return [r.get(key, MISSING) if type(r) is dict else MISSING for r in records]
    values = []
    for record in records:
        value = record
        for key in path:
            if type(value) is not dict or key not in value:
                value = MISSING
                break
            value = value[key]
        values.append(value)
    return values


def project(entity: Entity, records: Sequence[Any]) -> pd.DataFrame:
    """The entity's fields as object columns; absent fields hold MISSING, not None."""
    return pd.DataFrame(
        {f.column: pd.Series(_values(records, f.path), dtype=object) for f in entity.fields}
    )


def _fast_values(records: Sequence[Any], field: Field) -> list[Any]:
    """The field of every record, at C speed; KeyError/TypeError when a record lacks it or a
    step of its path is no object (the exact path then explains which)."""
    values: Any = records
    for key in field.path[:-1]:
        values = map(itemgetter(key), values)
    last = field.path[-1]
    if field.optional:
        return [v.get(last) for v in values]
    return list(map(itemgetter(last), values))


def _arrow_columns(entity: Entity, records: Sequence[Any]) -> pyarrow.Table | None:
    """Every field as an Arrow array of its contract type, or None if any value is not of
    that type (or a required field is absent): then the exact path decides."""
    columns = {}
    try:
        for field in entity.fields:
            array = pyarrow.array(
                _fast_values(records, field), type=ARROW_TYPES[field.kind], from_pandas=False
            )
            if field.kind == "datetime":
                array = pc.cast(array, UTC_MICROS)
            columns[field.column] = array
    except (
        KeyError,
        TypeError,
        AttributeError,
        pyarrow.ArrowInvalid,
        pyarrow.ArrowTypeError,
        pyarrow.ArrowNotImplementedError,
    ):
        return None
    return pyarrow.table(columns)


# -- validation --------------------------------------------------------------------------------


def _reasons(failures: pd.DataFrame) -> dict[int, list[str]]:
    rows = failures[failures["index"].notna()]
    by_row: dict[int, list[str]] = {}
    for index, column, check in zip(rows["index"], rows["column"], rows["check"], strict=True):
        text = "is null" if check == "not_nullable" else str(check)
        by_row.setdefault(int(index), []).append(f"{column}: {text}")
    return by_row


def _failures(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> dict[int, list[str]]:
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as exc:
        return _reasons(exc.failure_cases)
    return {}


def validate_records(
    entity: Entity,
    records: Sequence[Any],
    positions: Sequence[tuple[int, int]] | np.ndarray,
    *,
    expected_partner_id: str | np.ndarray | None = None,
    exact: bool = False,
) -> ValidatedBatch:
    """Validate a batch of raw records of one entity.

    `positions` holds (page_no, page_row) for each record, so every quarantine row points at
    the record as served. `expected_partner_id` (organizations) quarantines a record that names
    another partner than the list it came from (one id for the batch, or one per record).
    `exact=True` skips the fast path (tests use it to check that both paths agree).
    """
    pages = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    table = None if exact else _arrow_columns(entity, records)
    if table is not None:
        return _validate_fast(entity, table, pages, expected_partner_id)
    return _validate_exact(entity, records, pages, expected_partner_id)


def arrow_record_type(entity: Entity) -> pyarrow.StructType:
    """The JSON record of a flat entity as an Arrow struct: each field with the type its JSON
    value has (a date-time is a string), for `clients.ArrowPageDecoder`."""
    if any(len(f.path) != 1 for f in entity.fields):
        raise ValueError(f"{entity.name} records are nested; only flat records decode to Arrow")
    return pyarrow.struct([(f.column, ARROW_TYPES[f.kind]) for f in entity.fields])


def required_fields(entity: Entity) -> tuple[str, ...]:
    """Fields every record must hold, non-null (`ArrowPageDecoder` leaves other pages to the
    exact path, which tells an absent field from a null one)."""
    return tuple(f.column for f in entity.fields if not (f.optional or f.nullable))


def validate_table(
    entity: Entity,
    table: pyarrow.Table,
    positions: np.ndarray,
    *,
    expected_partner_id: str | np.ndarray | None = None,
) -> ValidatedBatch:
    """Validate records that arrived as Arrow columns (`arrow_record_type`: date-times still
    strings), with the same answers as `validate_records` on the same records decoded by
    orjson: the fast path, or the exact path when a date-time does not parse."""
    pages = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    columns = {}
    try:
        for field in entity.fields:
            column = table.column(field.column)
            columns[field.column] = (
                pc.cast(column, UTC_MICROS) if field.kind == "datetime" else column
            )
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError):
        return _validate_exact(entity, table.to_pylist(), pages, expected_partner_id)
    return _validate_fast(entity, pyarrow.table(columns), pages, expected_partner_id)


def _validate_fast(
    entity: Entity,
    table: pyarrow.Table,
    pages: np.ndarray,
    expected_partner_id: str | np.ndarray | None,
) -> ValidatedBatch:
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    reasons = _failures(entity.fast_schema(), frame)
    if expected_partner_id is not None and "partner_id" in frame:
        _other_partner(frame["partner_id"], expected_partner_id, reasons)
    is_bad = _bad_mask(len(frame), reasons)
    good = table.select(list(entity.loaded))
    if reasons:  # filtering with a mask of all True would copy every column
        good = good.filter(pyarrow.array(~is_bad))
    return _split(entity, good, frame["id"], pages, reasons, is_bad)


def _validate_exact(
    entity: Entity,
    records: Sequence[Any],
    pages: np.ndarray,
    expected_partner_id: str | np.ndarray | None,
) -> ValidatedBatch:
    frame = project(entity, records)
    reasons = _failures(entity.exact_schema(), frame)
    for i, record in enumerate(records):
        if type(record) is not dict:
            reasons[i] = ["record is not a JSON object"]
    if expected_partner_id is not None and "partner_id" in frame:
        _other_partner(_strings(frame["partner_id"]), expected_partner_id, reasons)
    is_bad = _bad_mask(len(records), reasons)
    good = pyarrow.Table.from_pandas(
        _typed(entity, frame.loc[~is_bad, list(entity.loaded)]), preserve_index=False
    )
    return _split(entity, good, _strings(frame["id"]), pages, reasons, is_bad)


def _other_partner(
    named: pd.Series, expected: str | np.ndarray, reasons: dict[int, list[str]]
) -> None:
    for i in np.flatnonzero((named.notna() & named.ne(expected)).fillna(False)):
        reasons.setdefault(int(i), []).append("partner_id: not the partner listed")


def _bad_mask(n: int, reasons: dict[int, list[str]]) -> np.ndarray:
    is_bad = np.zeros(n, dtype=bool)
    is_bad[list(reasons)] = True
    return is_bad


def _split(
    entity: Entity,
    good: pyarrow.Table,
    ids: pd.Series,
    pages: np.ndarray,
    reasons: dict[int, list[str]],
    is_bad: np.ndarray,
) -> ValidatedBatch:
    """The batch's good rows with their positions (date-times that name no real day made
    null), its quarantine rows, and the rows saying what was made null."""
    good_index = np.flatnonzero(~is_bad)
    # record ids as Python objects only for the rows that need one (bad or normalized rows,
    # usually none): converting a whole batch's ids costs more than validating them
    good, normalized = _normalize_dates(
        entity, good, lambda rows: ids.iloc[good_index[rows]].to_numpy(dtype=object)
    )
    good = good.append_column("page_no", pyarrow.array(pages[~is_bad, 0]))
    good = good.append_column("page_row", pyarrow.array(pages[~is_bad, 1]))
    if len(normalized):
        at = normalized.pop("row").to_numpy(dtype=np.int64)
        normalized.insert(1, "page_no", pages[~is_bad, 0][at])
        normalized.insert(2, "page_row", pages[~is_bad, 1][at])
    bad_index = np.flatnonzero(is_bad)
    bad_ids = pd.Series(ids.iloc[bad_index].to_numpy(dtype=object), dtype="string")
    well_formed = bad_ids.str.fullmatch(entity.id_pattern).fillna(False).astype(bool)
    bad = pd.DataFrame(
        {
            "record_id": bad_ids.where(well_formed),
            "page_no": pages[bad_index, 0],
            "page_row": pages[bad_index, 1],
            "reason": ["; ".join(dict.fromkeys(reasons[int(i)])) for i in bad_index],
        }
    )
    return ValidatedBatch(rows=good, bad=bad, normalized=normalized)


def _normalize_dates(
    entity: Entity, good: pyarrow.Table, ids: Callable[[np.ndarray], np.ndarray]
) -> tuple[pyarrow.Table, pd.DataFrame]:
    """`good` with every loaded date-time before EARLIEST_REAL_DATE made null, and a row per
    value made null: (record_id (`ids` of the rows' indexes in `good`), row (its index in
    `good`), reason). Cheap when there are none: one comparison per date-time column."""
    found: list[pd.DataFrame] = []
    for f in entity.fields:
        if f.kind != "datetime" or not f.loaded or not good.num_rows:
            continue
        column = good.column(f.column)
        unreal = pc.fill_null(pc.less(column, EARLIEST_REAL_DATE), False)
        if not pc.any(unreal).as_py():
            continue
        rows = np.flatnonzero(unreal.to_numpy(zero_copy_only=False))
        good = good.set_column(
            good.schema.get_field_index(f.column),
            f.column,
            pc.if_else(unreal, pyarrow.scalar(None, UTC_MICROS), column),
        )
        found.append(
            pd.DataFrame(
                {
                    "record_id": ids(rows),
                    "row": rows,
                    "reason": f"{f.column}: before year 1, not a real date-time; stored as null",
                }
            )
        )
    if not found:
        return good, _empty_normalized()
    return good, pd.concat(found, ignore_index=True)


def _typed(entity: Entity, good: pd.DataFrame) -> pd.DataFrame:
    """The exact path's good rows with the column types of the fast path."""
    out = good.copy()
    for field in entity.fields:
        if not field.loaded:
            continue
        column = out[field.column].map(lambda v: None if v is MISSING else v)
        if field.kind == "boolean":
            out[field.column] = column.astype(pd.ArrowDtype(pyarrow.bool_()))
        elif field.kind == "datetime":
            array = pc.cast(
                pyarrow.array(column.to_numpy(dtype=object), pyarrow.string()), UTC_MICROS
            )
            out[field.column] = pd.Series(array, dtype=pd.ArrowDtype(UTC_MICROS), index=out.index)
        else:
            out[field.column] = column.astype(pd.ArrowDtype(pyarrow.string()))
    return out
