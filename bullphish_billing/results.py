"""The pipeline's vocabulary: every status and decision it records, and the results that carry them.

The words are `StrEnum`s, so they are stored and printed as their plain values (the warehouse's
`status` columns, the artifacts, the terminal) and compare equal to them. Rules by number:
docs/billing-rules.md.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum

import pandas as pd

from bullphish_billing.errors import EXIT_OK, EXIT_PROBLEMS
from bullphish_billing.text import bounded

MODULES = ("training_awareness", "phishing")
"""BullPhish ID's billed modules (rule 3); each is a boolean column of the same name on an
organization (`raw.organizations`), and the SQL that reads them is written from this tuple."""


class SubscriptionType(StrEnum):
    """A partner's subscription (rule 3): what a module's unit is."""

    PER_ORGANIZATION = "per_organization"  # 1 per organization with the module enabled
    PER_USER = "per_user"  # the organization's active targets, when the module is enabled


SUBSCRIPTION_TYPES = tuple(str(s) for s in SubscriptionType)

BILLING_TYPES = tuple(
    f"bullphish_id.{module}.{sub}" for sub in SUBSCRIPTION_TYPES for module in MODULES
)
"""KaseyaOne's billing types (rule 5): `bullphish_id.<module>.<subscription type>`."""


class Decision(StrEnum):
    """Rule 1 for a partner on a date (billing_rules.decide_partners)."""

    BILLABLE = "billable"
    SKIPPED = "skipped"  # a prerequisite is not met
    HELD = "held"  # the partner's own record is bad


class PartnerStatus(StrEnum):
    """How a partner-date ended in a run (ops.partner_runs.status)."""

    DELIVERED = "delivered"
    PARTIAL = "partial"  # delivered, but organizations held or metrics rejected
    SKIPPED = "skipped"
    HELD = "held"
    FAILED = "failed"
    DRY_RUN = "dry_run"


PROBLEMS = frozenset({PartnerStatus.HELD, PartnerStatus.FAILED, PartnerStatus.PARTIAL})
"""The partner statuses that end a run with exit code 1 (held, rejected or failed)."""

DONE = frozenset({PartnerStatus.DELIVERED, PartnerStatus.SKIPPED})
"""The partner statuses after which a partner-date needs nothing more (a backfill skips it)."""


class BatchStatus(StrEnum):
    """A batch of the delivery outbox (ops.outbox.status)."""

    PENDING = "pending"  # to be sent, or sent and its answer not yet recorded
    ACKNOWLEDGED = "acknowledged"
    FAILED = "failed"  # refused for good (a 4xx other than 409/429)


class MappingStatus(StrEnum):
    """A partner's organization mappings as fetched from KaseyaOne."""

    LINKED = "linked"
    NOT_LINKED = "not_linked"  # 404: the partner is not linked, which is normal
    FAILED = "failed"


class DateStatus(StrEnum):
    """How a date of a backfill ended."""

    DELIVERED = "delivered"  # exit 0
    DRY_RUN = "dry_run"  # exit 0
    PROBLEMS = "problems"  # the run finished, something held, rejected or failed: exit 1
    FAILED = "failed"  # the date's run itself failed: exit 1
    DONE = "done"  # delivered by an earlier run, not billed again: exit 0


# -- a daily run ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PartnerDecision:
    """Rule 1 for one partner on one date: billable, skipped (prerequisite) or held."""

    partner_id: str
    subscription_type: str | None
    decision: Decision
    reason: str | None


@dataclass(frozen=True)
class Evaluation:
    """What the rules made of one extracted partner-date."""

    partner_id: str
    subscription_type: str | None
    held: bool
    reason: str | None
    organizations_billed: int
    organizations_held: int
    records_received: int
    records_quarantined: int
    metrics_computed: int
    metrics_held: int  # metrics not computed because their organization or partner-date is held


@dataclass(frozen=True)
class PartnerOutcome:
    usage_date: dt.date
    partner_id: str
    subscription_type: str | None
    status: PartnerStatus
    reason: str | None = None
    organizations_billed: int = 0
    organizations_held: int = 0
    records_received: int = 0
    records_quarantined: int = 0
    metrics_computed: int = 0
    metrics_held: int = 0
    metrics_sent: int = 0
    metrics_rejected: int = 0


@dataclass
class RunSummary:
    run_id: str
    usage_date: dt.date
    dry_run: bool
    outcomes: list[PartnerOutcome]
    earlier_batches_sent: int = 0
    still_pending: int = 0
    notes: list[str] = field(default_factory=list)
    stopped_by: int | None = None
    """The signal that stopped the run (SIGTERM, SIGINT: stopping.py), if one did."""
    reconciliation_differences: int = 0
    """Metrics the run's reconciliation found not as KaseyaOne acknowledged them (rule 11)."""
    reconciliation_failed: int = 0
    """Partner-dates the reconciliation could not check (KaseyaOne not read), or 1 when the
    reconciliation itself failed."""
    reconciliation_repaired: int = 0
    """Metrics re-sent to repair what the previous reconciliation found missing or differing
    at KaseyaOne (rule 11)."""

    @property
    def exit_code(self) -> int:
        if self.stopped_by is not None:
            return 128 + self.stopped_by
        problems = any(o.status in PROBLEMS for o in self.outcomes)
        reconciliation = self.reconciliation_differences or self.reconciliation_failed
        unclean = problems or self.still_pending or self.notes or reconciliation
        return EXIT_PROBLEMS if unclean else EXIT_OK

    def one_line(self) -> str:
        """For example `6 delivered, 1 held; 74 metrics sent`."""
        sent = sum(o.metrics_sent for o in self.outcomes)
        text = f"{outcome_counts(self.outcomes) or 'no partners'}; {sent} metrics sent"
        if self.earlier_batches_sent:
            text += f"; {self.earlier_batches_sent} earlier batch(es) delivered"
        if self.still_pending:
            text += f"; {self.still_pending} batch(es) still pending"
        if self.reconciliation_repaired:
            text += f"; {self.reconciliation_repaired} metric(s) re-sent to repair KaseyaOne"
        if self.reconciliation_differences:
            text += f"; {self.reconciliation_differences} reconciliation difference(s)"
        if self.reconciliation_failed:
            text += f"; {self.reconciliation_failed} reconciliation check(s) failed"
        return text

    def to_frame(self) -> pd.DataFrame:
        rows = [asdict(o) | {"status": str(o.status)} for o in self.outcomes]
        return pd.DataFrame(rows, columns=[f.name for f in fields(PartnerOutcome)])


def outcome_counts(outcomes: Iterable[PartnerOutcome]) -> str:
    """The partners per status, for example `6 delivered, 1 held` ("" for none): the start of
    a run's one-line summary, and the message of a backfill date's report task."""
    counts = Counter(o.status for o in outcomes)
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


# -- a backfill ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DateResult:
    """One date of a backfill."""

    usage_date: dt.date
    status: DateStatus
    exit_code: int
    detail: str
    metrics_sent: int = 0

    @classmethod
    def from_summary(cls, summary: RunSummary) -> DateResult:
        code = summary.exit_code
        if code:
            status = DateStatus.PROBLEMS
        else:
            status = DateStatus.DRY_RUN if summary.dry_run else DateStatus.DELIVERED
        sent = sum(o.metrics_sent for o in summary.outcomes)
        return cls(summary.usage_date, status, code, summary.one_line(), sent)

    @classmethod
    def failure(cls, usage_date: dt.date, reason: object) -> DateResult:
        detail = bounded(str(reason)) or "the run failed"
        return cls(usage_date, DateStatus.FAILED, EXIT_PROBLEMS, detail)

    @classmethod
    def done_before(cls, usage_date: dt.date) -> DateResult:
        detail = "delivered by an earlier run (force bills it again)"
        return cls(usage_date, DateStatus.DONE, EXIT_OK, detail)


@dataclass
class BackfillSummary:
    start: dt.date
    end: dt.date
    dry_run: bool
    force: bool
    results: list[DateResult] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_PROBLEMS if any(r.exit_code for r in self.results) else EXIT_OK

    @property
    def failed(self) -> list[dt.date]:
        return [r.usage_date for r in self.results if r.status == DateStatus.FAILED]

    @property
    def unclean(self) -> list[DateResult]:
        """The dates that make the backfill exit 1: failed, or finished with problems."""
        return [r for r in self.results if r.exit_code]

    def one_line(self) -> str:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        sent = sum(r.metrics_sent for r in self.results)
        return (
            f"backfill {self.start}..{self.end}: {len(self.results)} date(s): "
            f"{parts or 'nothing to do'}; {sent} metrics sent"
        )

    def artifact_rows(self) -> list[dict]:
        return [
            {
                "usage_date": r.usage_date.isoformat(),
                "status": str(r.status),
                "exit_code": r.exit_code,
                "metrics_sent": r.metrics_sent,
                "detail": r.detail,
            }
            for r in self.results
        ]
