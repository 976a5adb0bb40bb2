"""The sandbox's knobs: data size, seed, fault injection and credentials."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

PARTNER_ERROR_CODES = {
    404: "not_found",
    410: "history_expired",
    500: "internal",
    502: "internal",
    503: "internal",
}
"""The statuses ``partner_errors`` may inject, with the error code each is served with."""


@dataclass(frozen=True)
class SandboxConfig:
    """Everything that shapes the sandbox servers and their generated data.

    The data depends only on ``seed``, the three size fields and the resolved ``today``:
    two sandboxes with equal values serve byte-identical lists. Fault knobs draw from a
    seeded random generator per server, so a given sequence of requests meets the same faults.
    ``today`` is resolved once, when a :class:`~bullphish_billing.sandbox.world.World` is built
    (``None`` means the real UTC date at that moment), so a sandbox running across midnight keeps
    serving the same window.
    """

    seed: int = 7
    partners: int = 12
    organizations_per_partner: int = 6
    targets_per_organization: int = 20
    short_pages: bool = False
    """Serve pages with fewer records than ``limit`` (random sizes, sometimes 0 with a cursor)."""
    rate_429: float = 0.0
    """Probability per request of a 429 ``rate_limited`` with ``Retry-After: 0`` (rarely 1)."""
    rate_5xx: float = 0.0
    """Probability per request of a 500/502/503 ``internal`` before anything is touched."""
    latency_ms: float = 0.0
    token_lifetime_s: int = 3600
    malformed_rate: float = 0.0
    """Fraction of organization and target records served malformed (deterministic per
    seed, record and date)."""
    # Sandbox-only credentials, kept out of repr() all the same (secrets never reach logs).
    bullphish_token: str = field(default="sandbox-bullphish-token", repr=False)
    kaseyaone_client_id: str = "sandbox-client"
    kaseyaone_client_secret: str = field(default="sandbox-secret", repr=False)
    today: datetime.date | None = None
    rate_lost_response: float = 0.0
    """Probability that a POST /v1/billing/usage is stored and then answered with a 5xx (the
    response is "lost"): a retry with the same Idempotency-Key must be a replay. (Last, so the
    fields above keep their positions.)"""
    partner_errors: tuple[tuple[str, int], ...] = ()
    """(partner id, status) pairs: every request for that partner's organizations or targets
    is answered with that status and the contract's error body, after the token check: 404
    ``not_found`` (the partner is gone), 410 ``history_expired`` (its history expired), or
    500/502/503 ``internal`` (its data is unavailable). The partner list is served as usual.
    For outage tests: one partner fails, the others must go on."""
    cache_mb: int = 512
    """Memory for serialized lists (each list is generated and serialized once, then served
    page by page from memory). It should hold the lists clients read side by side: an evicted
    list is generated again for its next page. It does not change what is served."""
    drift_rate: float = 0.0
    """KaseyaOne's store drifts after it acknowledged: right after the first batch of a
    partner-date is stored (and answered), each metric it holds is, with this probability,
    dropped or given other units (half and half), and with the same probability the
    partner-date gains one metric for an organization nobody sent (``o_drift...``). Seeded
    by (seed, partner, metric), the same on every date: the same sends drift the same way,
    whatever their order. Each partner-date drifts at most once (a later re-send stays as
    sent), and every drift is recorded in ``KaseyaOneState.drifts``. (Last: positions are
    relied on.)"""

    def __post_init__(self) -> None:
        for name in ("partners", "organizations_per_partner", "targets_per_organization"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.partners > 9999:
            raise ValueError("partners must be at most 9999")
        if not 0.0 <= self.drift_rate <= 1.0:
            raise ValueError(f"drift_rate must be in [0, 1], got {self.drift_rate!r}")
        for name in ("rate_429", "rate_5xx", "rate_lost_response"):
            value = getattr(self, name)
            # 1.0 would fail every request: a retrying client could never succeed.
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not 0.0 <= self.malformed_rate <= 1.0:
            raise ValueError(f"malformed_rate must be in [0, 1], got {self.malformed_rate!r}")
        if not isinstance(self.cache_mb, int) or self.cache_mb < 1:
            raise ValueError(f"cache_mb must be an integer >= 1, got {self.cache_mb!r}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms!r}")
        if not isinstance(self.token_lifetime_s, int) or self.token_lifetime_s < 1:
            raise ValueError(
                f"token_lifetime_s must be an integer >= 1, got {self.token_lifetime_s!r}"
            )
        for partner_id, status in self.partner_errors:
            if status not in PARTNER_ERROR_CODES:
                raise ValueError(
                    f"partner_errors: {partner_id}: status must be one of "
                    f"{sorted(PARTNER_ERROR_CODES)}, got {status!r}"
                )
        for name in ("bullphish_token", "kaseyaone_client_id", "kaseyaone_client_secret"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")

    def resolve_today(self) -> datetime.date:
        """The sandbox's "today" (UTC): ``today`` if set, else the real UTC date now."""
        if self.today is not None:
            return self.today
        return datetime.datetime.now(datetime.UTC).date()
