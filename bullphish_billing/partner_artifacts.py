"""The per-partner Prefect artifact: one key per partner, a new version each run.

Prefect's Artifacts page lists one entry per key with its history, so keying by partner
(`billing-p-0001`) shows each partner's runs one after another. Keys allow lowercase letters,
digits and dashes only: `p_0001` becomes `billing-p-0001`; an id with capitals gets a short
hash as well, so that `p_Ab` and `p_ab` keep apart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

from bullphish_billing.notable import NotableChange, markdown_table
from bullphish_billing.results import PartnerOutcome


def key(partner_id: str) -> str:
    """The artifact key of a partner: lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", partner_id.lower()).strip("-")
    if partner_id != partner_id.lower():
        slug += "-" + hashlib.sha1(partner_id.encode()).hexdigest()[:6]
    return f"billing-{slug}"


def markdown(outcome: PartnerOutcome, changes: list[NotableChange]) -> str:
    """One partner's outcome for the run's date, and its notable changes."""
    o = outcome
    lines = [
        f"# `{o.partner_id}` on {o.usage_date}: {o.status}",
        "",
        f"{o.reason}" if o.reason else "",
        "",
        "| subscription | organizations billed | organizations held | metrics computed "
        "| metrics held | metrics sent | metrics rejected | records quarantined |",
        "|---|---|---|---|---|---|---|---|",
        f"| {o.subscription_type or '-'} | {o.organizations_billed} | {o.organizations_held} "
        f"| {o.metrics_computed} | {o.metrics_held} | {o.metrics_sent} | {o.metrics_rejected} "
        f"| {o.records_quarantined} |",
        "",
    ]
    mine = [c for c in changes if c.partner_id == o.partner_id]
    if mine:
        lines += [
            f"## Notable changes ({len(mine)})",
            "",
            *markdown_table(mine, with_partner=False),
        ]
    elif o.metrics_computed:
        before = o.usage_date - dt.timedelta(days=1)
        lines.append(
            f"No notable changes against {before} (nothing is compared without its metrics)."
        )
    return "\n".join(lines)
