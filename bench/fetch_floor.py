"""The fetch floor: the same pages the flow pulls, pulled and JSON-decoded by a bare httpx
client doing nothing else, with the flow's access pattern: partners side by side (at most
`partner_concurrency` at a time), each partner's two lists (organizations, targets) side by
side, each list a sequential cursor chain."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import httpx
import orjson


async def _chain(client: httpx.AsyncClient, path: str, as_of: dt.date, limit: int) -> int:
    records, cursor = 0, None
    while True:
        params = {"as_of": as_of.isoformat(), "limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(path, params=params)
        response.raise_for_status()
        page = orjson.loads(response.content)
        records += len(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return records


async def _floor(
    base_url: str, token: str, as_of: dt.date, partner_concurrency: int, limit: int
) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=partner_concurrency * 2)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=60
    ) as client:
        partners: list[dict] = []
        cursor = None
        while True:
            params = {"as_of": as_of.isoformat(), "limit": limit}
            if cursor:
                params["cursor"] = cursor
            page = orjson.loads((await client.get("/v1/partners", params=params)).content)
            partners += page["data"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        billable = [
            p["id"]
            for p in partners
            if p["kaseyaone"]["activated"]
            and p["kaseyaone"]["psa"] is not None
            and p["kaseyaone"]["unified_login_enabled"]
        ]
        gate = asyncio.Semaphore(partner_concurrency)

        async def one(pid: str) -> int:
            async with gate:
                counts = await asyncio.gather(
                    _chain(client, f"/v1/partners/{pid}/organizations", as_of, limit),
                    _chain(client, f"/v1/partners/{pid}/targets", as_of, limit),
                )
                return sum(counts)

        records = sum(await asyncio.gather(*(one(p) for p in billable)))
    return {"partners": len(billable), "records": records}


def fetch_floor(
    base_url: str, token: str, as_of: dt.date, *, partner_concurrency: int = 4, limit: int = 1000
) -> dict:
    """Pull and decode every page the flow would; return counts and wall seconds."""
    start = time.perf_counter()
    result = asyncio.run(_floor(base_url, token, as_of, partner_concurrency, limit))
    return result | {"seconds": time.perf_counter() - start}
