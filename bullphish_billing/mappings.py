"""KaseyaOne's organization mappings: which billed organizations the partner's PSA invoices.

Each run fetches the mappings of the partners it delivered, a few partners at a time over one
client (one Prefect task), and stores them in `ops.organization_mappings`, with the fetch itself in
`ops.mapping_fetches`; `main.unmapped_organizations` compares them with what was billed.

The mappings only inform analysts: a fetch that fails is logged and leaves the partner's
previous mappings in place, and never changes a run's outcome. A 404 is KaseyaOne saying the
partner is not linked: that is normal (the partner then has no mappings at all).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

import duckdb
import pandas as pd

from bullphish_billing.clients import ApiError, FinalApiError, KaseyaOneClient
from bullphish_billing.clients.kaseyaone import MAX_LIST_RECORDS
from bullphish_billing.results import MappingStatus
from bullphish_billing.warehouse.db import transaction

MAPPING_FIELDS = ("module_organization_id", "psa", "psa_company_id", "psa_company_name")


@dataclass(frozen=True)
class MappingFetch:
    """One partner's mappings as fetched: status linked, not_linked (404) or failed."""

    partner_id: str
    status: MappingStatus
    # (organization_id, psa, psa_company_id, psa_company_name)
    mappings: tuple[tuple[str, str, str, str], ...] = ()
    error: str | None = None


FETCHED_AT_ONCE = 4


async def fetch_all(
    client: KaseyaOneClient, partner_ids: list[str], *, max_mappings: int
) -> list[MappingFetch]:
    """Fetch the partners' mappings, FETCHED_AT_ONCE at a time, holding at most about
    `max_mappings` in all (each fetch may take what is left when it starts; once nothing is
    left, the remaining partners are `failed` unfetched, and keep their previous mappings)."""
    gate = asyncio.Semaphore(FETCHED_AT_ONCE)
    held = 0

    async def one(partner_id: str) -> MappingFetch:
        nonlocal held
        async with gate:
            left = max_mappings - held
            if left <= 0:
                return MappingFetch(
                    partner_id,
                    MappingStatus.FAILED,
                    error=f"not fetched: {held} mappings held already",
                )
            result = await fetch(client, partner_id, max_records=left)
            held += len(result.mappings)
            return result

    return list(await asyncio.gather(*(one(p) for p in partner_ids)))


async def fetch(
    client: KaseyaOneClient, partner_id: str, *, max_records: int = MAX_LIST_RECORDS
) -> MappingFetch:
    """Fetch one partner's mappings; every API failure becomes a `failed` result."""
    try:
        records = await client.list_organization_mappings(partner_id, max_records=max_records)
    except FinalApiError as exc:
        if exc.status == 404:
            return MappingFetch(partner_id, MappingStatus.NOT_LINKED)
        return MappingFetch(partner_id, MappingStatus.FAILED, error=str(exc))
    except ApiError as exc:
        return MappingFetch(partner_id, MappingStatus.FAILED, error=str(exc))
    rows = []
    for record in records:
        values = tuple(record.get(f) if isinstance(record, dict) else None for f in MAPPING_FIELDS)
        if not all(isinstance(v, str) for v in values):
            return MappingFetch(
                partner_id,
                MappingStatus.FAILED,
                error="a mapping lacks one of " + ", ".join(MAPPING_FIELDS),
            )
        rows.append(values)
    return MappingFetch(partner_id, MappingStatus.LINKED, tuple(rows))  # type: ignore[arg-type]


def store(con: duckdb.DuckDBPyConnection, fetches: list[MappingFetch], run_id: str) -> int:
    """Replace the mappings of every partner fetched (linked or not_linked) in one
    transaction; failed fetches change nothing. Returns the partners replaced."""
    done = [f for f in fetches if f.status in (MappingStatus.LINKED, MappingStatus.NOT_LINKED)]
    if not done:
        return 0
    partners = [f.partner_id for f in done]
    now = dt.datetime.now(dt.UTC)
    frame = pd.DataFrame(
        [(f.partner_id, *m) for f in done for m in f.mappings],
        columns=["partner_id", "organization_id", "psa", "psa_company_id", "psa_company_name"],
    ).drop_duplicates(subset=["partner_id", "organization_id"], keep="last")
    fetched = pd.DataFrame(
        {
            "partner_id": partners,
            "status": [str(f.status) for f in done],
            "mappings": [len(f.mappings) for f in done],
        }
    )
    with transaction(con):
        for table in ("ops.organization_mappings", "ops.mapping_fetches"):
            con.execute(f"DELETE FROM {table} WHERE list_contains(?, partner_id)", [partners])
        con.register("fetched_mappings", frame)
        con.execute(
            "INSERT INTO ops.organization_mappings "
            "SELECT partner_id, organization_id, psa, psa_company_id, psa_company_name, ?, ? "
            "FROM fetched_mappings",
            [now, run_id],
        )
        con.unregister("fetched_mappings")
        con.register("fetched_partners", fetched)
        con.execute(
            "INSERT INTO ops.mapping_fetches "
            "SELECT partner_id, status, mappings, ?, ? FROM fetched_partners",
            [now, run_id],
        )
        con.unregister("fetched_partners")
    return len(done)
