"""Shards: how a run's billable partners are split among extract shards (BILLING_SHARDS), and
what became of each shard's run.

Partners are packed by their size (the targets each served on the last date it was
extracted), largest first, each into the shard with the fewest targets so far; with no
history every partner weighs the same, which deals them out round robin. The connections
BILLING_MAX_CONNECTIONS allows are split among the shards, so that together they never open
more than a single run would.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb


@dataclass(frozen=True)
class Shard:
    """One shard of a run: its number (0..K-1), its partners, its share of the connections."""

    number: int
    partner_ids: tuple[str, ...]
    max_connections: int
    weight: int = 0  # the targets its partners served last time (0: no history)


@dataclass(frozen=True)
class ShardRun:
    """What the orchestrator knows of a shard's run: its name (as the Prefect UI shows it),
    and why it did not complete, if it did not."""

    shard: Shard
    run_name: str
    failure: str | None = None

    def reason(self, what: str) -> str:
        """A partner's failure reason naming this shard's run."""
        return f"extract shard {self.shard.number} (flow run {self.run_name}) {what}"


def last_sizes(
    con: duckdb.DuckDBPyConnection, usage_date: dt.date, partner_ids: list[str]
) -> dict[str, int]:
    """Per partner, the targets it served on the latest date before `usage_date` it was
    extracted (partners never extracted before are left out)."""
    rows = con.execute(
        "SELECT partner_id, arg_max(targets_received, usage_date) FROM ops.extractions "
        "WHERE usage_date < ? AND list_contains(?, partner_id) GROUP BY partner_id",
        [usage_date, partner_ids],
    ).fetchall()
    return {p: int(n or 0) for p, n in rows}


def pack(
    partner_ids: list[str], shards: int, sizes: dict[str, int], max_connections: int
) -> list[Shard]:
    """Split the partners into at most `shards` shards balanced by size (see the module
    docstring); never more shards than partners or connections, and no empty shard. A
    partner without a known size counts as the average known one (1 when none is known)."""
    k = max(1, min(shards, len(partner_ids), max_connections))
    known = [sizes[p] for p in partner_ids if p in sizes]
    default = max(1, round(sum(known) / len(known))) if known else 1
    weight = {p: max(1, sizes.get(p, default)) for p in partner_ids}
    load = [0] * k
    members: list[list[str]] = [[] for _ in range(k)]
    # largest first; equal weights keep the given order, so no history deals round robin
    for partner_id in sorted(partner_ids, key=lambda p: -weight[p]):
        i = min(range(k), key=lambda n: (load[n], len(members[n]), n))
        members[i].append(partner_id)
        load[i] += weight[partner_id]
    share = max(1, max_connections // k)
    return [
        Shard(n, tuple(sorted(m)), share, sum(sizes.get(p, 0) for p in m))
        for n, m in enumerate(members)
        if m
    ]
