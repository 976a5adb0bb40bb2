"""Per-record validation of what BullPhish ID serves, with pandera.

Each entity (partner, organization, target) has a projection (the fields billing needs, read
from the raw JSON records, personal data left behind) and a pandera schema that says what the
contract allows. `validate_records` splits a batch of records into rows to load and quarantine
rows with a reason; nothing is dropped. Reasons name the field and the broken rule, never the
value (a value may be personal data).

Set-level rules (duplicates, unknown organizations, the hold threshold) need the whole
partner-date and live in `billing_rules`, in SQL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

PARTNER_ID_PATTERN = r"^p_[A-Za-z0-9]{1,40}$"
ORGANIZATION_ID_PATTERN = r"^o_[A-Za-z0-9]{1,40}$"
TARGET_ID_PATTERN = r"^t_[A-Za-z0-9]{1,40}$"


class _Missing:
    """Marks a field absent from a record (as opposed to present and null)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


def _type_mask(series: pd.Series, kind: type) -> pd.Series:
    """True where the value's type is exactly `kind` (so True is not an int, 1 not a bool)."""
    flags = np.fromiter((type(v) is kind for v in series), dtype=bool, count=len(series))
    return pd.Series(flags, index=series.index)


def _strings(series: pd.Series) -> pd.Series:
    """The string values as a pandas string Series; NA where the value is not a string."""
    return series.where(_type_mask(series, str)).astype("string")


def _is_type(kind: type) -> Callable[[pd.Series], pd.Series]:
    def check(series: pd.Series) -> pd.Series:
        return _type_mask(series, kind)

    return check


def _present(series: pd.Series) -> pd.Series:
    return ~series.map(lambda v: v is MISSING)


def _str_or_null(series: pd.Series) -> pd.Series:
    return series.map(lambda v: v is MISSING or v is None or type(v) is str)


def _iso_datetime(series: pd.Series) -> pd.Series:
    parsed = pd.to_datetime(_strings(series), format="ISO8601", utc=True, errors="coerce")
    return pd.Series(parsed.notna().to_numpy(), index=series.index)


def _length_between(low: int, high: int) -> Callable[[pd.Series], pd.Series]:
    def check(series: pd.Series) -> pd.Series:
        return _strings(series).str.len().between(low, high).fillna(False).astype(bool)

    return check


STRING = pa.Check(_is_type(str), name="not a string")
BOOLEAN = pa.Check(_is_type(bool), name="not a boolean")
PRESENT = pa.Check(_present, name="missing")
ISO_DATETIME = pa.Check(_iso_datetime, name="not an ISO 8601 date-time")
NAME_LENGTH = pa.Check(_length_between(1, 200), name="not a string of 1 to 200 characters")
OPTIONAL_STRING = pa.Check(_str_or_null, name="not a string or null")


def _matches(series: pd.Series, pattern: str) -> pd.Series:
    return _strings(series).str.fullmatch(pattern).fillna(False).astype(bool)


def _pattern(pattern: str) -> pa.Check:
    return pa.Check(lambda s: _matches(s, pattern), name=f"does not match {pattern}")


def _one_of(*values: str | None) -> pa.Check:
    allowed = [v for v in values if v is not None]
    shown = ", ".join(repr(v) if v is not None else "null" for v in values)
    if None in values:
        return pa.Check(
            lambda s: s.map(
                lambda v: v is None or v is MISSING or (type(v) is str and v in allowed)
            ),
            name=f"not one of {shown}",
        )
    return pa.Check(
        lambda s: _strings(s).isin(allowed).fillna(False).astype(bool), name=f"not one of {shown}"
    )


def _required(*checks: pa.Check) -> pa.Column:
    return pa.Column(object, list(checks), nullable=False)


def _nullable(*checks: pa.Check) -> pa.Column:
    return pa.Column(object, [PRESENT, *checks], nullable=True)


@dataclass(frozen=True)
class Entity:
    """How one kind of record is projected, validated and typed for loading."""

    name: str
    id_pattern: str
    fields: dict[str, tuple[str, ...]]  # column -> path in the JSON record
    schema: pa.DataFrameSchema
    loaded: tuple[str, ...]  # columns kept for the warehouse (no personal data)
    booleans: tuple[str, ...] = ()
    timestamps: tuple[str, ...] = ()


PARTNER = Entity(
    name="partner",
    id_pattern=PARTNER_ID_PATTERN,
    fields={
        "id": ("id",),
        "name": ("name",),
        "subscription_type": ("subscription_type",),
        "kaseyaone_activated": ("kaseyaone", "activated"),
        "psa": ("kaseyaone", "psa"),
        "unified_login_enabled": ("kaseyaone", "unified_login_enabled"),
        "updated_at": ("updated_at",),
    },
    schema=pa.DataFrameSchema(
        {
            "id": _required(_pattern(PARTNER_ID_PATTERN)),
            "name": _required(NAME_LENGTH),
            "subscription_type": _required(_one_of("per_organization", "per_user")),
            "kaseyaone_activated": _required(BOOLEAN),
            "psa": _nullable(_one_of("autotask", "bms", None)),
            "unified_login_enabled": _required(BOOLEAN),
            "updated_at": _required(ISO_DATETIME),
        }
    ),
    loaded=(
        "id",
        "name",
        "subscription_type",
        "kaseyaone_activated",
        "psa",
        "unified_login_enabled",
        "updated_at",
    ),
    booleans=("kaseyaone_activated", "unified_login_enabled"),
    timestamps=("updated_at",),
)

ORGANIZATION = Entity(
    name="organization",
    id_pattern=ORGANIZATION_ID_PATTERN,
    fields={
        "id": ("id",),
        "partner_id": ("partner_id",),
        "name": ("name",),
        "parent_id": ("parent_id",),
        "status": ("status",),
        "training_awareness": ("modules", "training_awareness"),
        "phishing": ("modules", "phishing"),
        "created_at": ("created_at",),
    },
    schema=pa.DataFrameSchema(
        {
            "id": _required(_pattern(ORGANIZATION_ID_PATTERN)),
            "partner_id": _required(STRING),
            "name": _required(NAME_LENGTH),
            "parent_id": _nullable(OPTIONAL_STRING),
            "status": _required(_one_of("active", "archived")),
            "training_awareness": _required(BOOLEAN),
            "phishing": _required(BOOLEAN),
            "created_at": _required(ISO_DATETIME),
        }
    ),
    loaded=(
        "id",
        "name",
        "parent_id",
        "status",
        "training_awareness",
        "phishing",
        "created_at",
    ),
    booleans=("training_awareness", "phishing"),
    timestamps=("created_at",),
)

TARGET = Entity(
    name="target",
    id_pattern=TARGET_ID_PATTERN,
    fields={
        "id": ("id",),
        "organization_id": ("organization_id",),
        "email": ("email",),
        "first_name": ("first_name",),
        "last_name": ("last_name",),
        "status": ("status",),
        "updated_at": ("updated_at",),
    },
    schema=pa.DataFrameSchema(
        {
            "id": _required(_pattern(TARGET_ID_PATTERN)),
            "organization_id": _required(STRING),
            "email": _required(STRING),
            # optional in the contract: absent, null or a string
            "first_name": pa.Column(object, [OPTIONAL_STRING], nullable=True),
            "last_name": pa.Column(object, [OPTIONAL_STRING], nullable=True),
            "status": _required(_one_of("active", "inactive")),
            "updated_at": _required(ISO_DATETIME),
        }
    ),
    loaded=("id", "organization_id", "status", "updated_at"),
    timestamps=("updated_at",),
)

ENTITIES = {e.name: e for e in (PARTNER, ORGANIZATION, TARGET)}

QUARANTINE_COLUMNS = ("record_id", "page_no", "page_row", "reason")


@dataclass
class ValidatedBatch:
    """A batch split in two: rows to load (typed, no personal data) and quarantine rows."""

    good: pd.DataFrame  # entity.loaded + page_no, page_row
    bad: pd.DataFrame  # QUARANTINE_COLUMNS


def _get(record: Any, path: tuple[str, ...]) -> Any:
    value = record
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def project(entity: Entity, records: Sequence[Any]) -> pd.DataFrame:
    """The entity's fields as object columns; absent fields hold MISSING, not None."""
    columns = {}
    for column, path in entity.fields.items():
        if len(path) == 1:
            key = path[0]
            values = [r.get(key, MISSING) if isinstance(r, dict) else MISSING for r in records]
        else:
            values = [_get(r, path) for r in records]
        columns[column] = pd.Series(values, dtype=object)
    frame = pd.DataFrame(columns)
    # a required field that is absent reads as null to pandera's not-nullable check
    required = [c for c, col in entity.schema.columns.items() if not col.nullable]
    for column in required:
        frame[column] = frame[column].map(lambda v: None if v is MISSING else v)
    return frame


def _reasons(entity: Entity, failures: pd.DataFrame, records: Sequence[Any]) -> dict[int, str]:
    rows = failures[failures["index"].notna()]
    by_row: dict[int, list[str]] = {}
    for index, column, check in zip(rows["index"], rows["column"], rows["check"], strict=True):
        text = "missing or null" if check == "not_nullable" else str(check)
        by_row.setdefault(int(index), []).append(f"{column}: {text}")
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            by_row[i] = ["record is not a JSON object"]
    return {i: "; ".join(dict.fromkeys(reasons)) for i, reasons in by_row.items()}


def validate_records(
    entity: Entity,
    records: Sequence[Any],
    positions: Sequence[tuple[int, int]],
    *,
    expected_partner_id: str | None = None,
) -> ValidatedBatch:
    """Validate a batch of raw records of one entity.

    `positions` holds (page_no, page_row) for each record, so every quarantine row points at
    the record as served. `expected_partner_id` (organizations) quarantines a record that names
    another partner than the list it came from.
    """
    frame = project(entity, records)
    try:
        entity.schema.validate(frame, lazy=True)
        reasons: dict[int, str] = {
            i: "record is not a JSON object"
            for i, r in enumerate(records)
            if not isinstance(r, dict)
        }
    except SchemaErrors as exc:
        reasons = _reasons(entity, exc.failure_cases, records)
    if expected_partner_id is not None and "partner_id" in frame:
        named = _strings(frame["partner_id"])
        wrong = frame.index[(named.notna() & named.ne(expected_partner_id)).fillna(False)]
        for i in wrong:
            reasons[int(i)] = "; ".join(
                filter(None, [reasons.get(int(i)), "partner_id: not the partner listed"])
            )

    pages = pd.DataFrame(list(positions), columns=["page_no", "page_row"], dtype="int64")
    is_bad = pd.Series(False, index=frame.index)
    if reasons:
        is_bad.loc[list(reasons)] = True

    good = frame.loc[~is_bad, list(entity.loaded)].copy()
    for column in entity.loaded:
        if column in entity.booleans:
            good[column] = good[column].astype(bool)
        elif column in entity.timestamps:
            good[column] = pd.to_datetime(good[column], format="ISO8601", utc=True)
        else:
            good[column] = good[column].astype("string")
    good["page_no"] = pages.loc[~is_bad, "page_no"].to_numpy()
    good["page_row"] = pages.loc[~is_bad, "page_row"].to_numpy()

    ids = frame.loc[is_bad, "id"]
    bad = pd.DataFrame(
        {
            "record_id": _strings(ids).where(_matches(ids, entity.id_pattern)),
            "page_no": pages.loc[is_bad, "page_no"].to_numpy(),
            "page_row": pages.loc[is_bad, "page_row"].to_numpy(),
            "reason": [reasons[int(i)] for i in frame.index[is_bad]],
        }
    )
    return ValidatedBatch(good=good.reset_index(drop=True), bad=bad.reset_index(drop=True))
