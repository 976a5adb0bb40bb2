"""The per-partner Prefect artifact: one key per partner, a new version each run that gives
the partner something to look at.

Prefect's Artifacts page lists one entry per key with its history, so keying by partner
(`billing-p-0001`) shows each partner's runs one after another. Keys allow lowercase letters,
digits and dashes only: `p_0001` becomes `billing-p-0001`; an id with capitals gets a short
hash as well, so that `p_Ab` and `p_ab` keep apart.

Only a partner with something to look at gets a new version (`worth_an_artifact`): each
artifact is one call to the Prefect API, which the server answers one at a time (about 12 ms
on the development machine, bench/README.md), per partner and run. Every partner stays in the
run's table artifact `billing-<date>` and in `run_history`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Collection, Iterable

from bullphish_billing.notable import NotableChange, markdown_table
from bullphish_billing.results import PROBLEMS, PartnerOutcome


def key(partner_id: str) -> str:
    """The artifact key of a partner: lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", partner_id.lower()).strip("-")
    if partner_id != partner_id.lower():
        slug += "-" + hashlib.sha1(partner_id.encode()).hexdigest()[:6]
    return f"billing-{slug}"


def worth_an_artifact(
    outcome: PartnerOutcome,
    changes: Iterable[NotableChange],
    reconciliation_partners: Collection[str],
) -> bool:
    """Whether the partner's outcome is worth a new version of its artifact: it was held, not
    delivered or partly delivered (PROBLEMS), it has a notable change in `changes`, or it is
    among `reconciliation_partners` (the run's reconciliation found a difference at KaseyaOne
    or could not read it, `ReconcileReport.partners_to_look_at`). Delivered with nothing
    notable, skipped (a prerequisite unmet) or a dry run are not: the run's table shows them."""
    if outcome.status in PROBLEMS:
        return True
    if outcome.partner_id in reconciliation_partners:
        return True
    return any(c.partner_id == outcome.partner_id for c in changes)


def markdown(
    outcome: PartnerOutcome, changes: list[NotableChange], reconciled_differently: bool = False
) -> str:
    """One partner's outcome for the run's date, its notable changes, and whether the run's
    reconciliation found the partner's metrics not as KaseyaOne acknowledged them."""
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
    if reconciled_differently:
        lines += [
            "The run's reconciliation found metrics of this partner not as KaseyaOne "
            "acknowledged them, or could not read them: the artifact "
            f"`reconciliation-{o.usage_date}` and the view `reconciliation_open` list them.",
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
