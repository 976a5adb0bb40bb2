"""Deterministic generated data behind both sandbox APIs.

Every fact is a hash of (seed, what it describes, period) (see ``_hashing``), so any as_of date
is computed on its own, nothing is stored, and the same seed and "today" always give the same
records in the same order. ``World.partners/organizations/targets`` return exactly what the
BullPhish ID sandbox serves for a date (malformed records included), so tests can compute the
expected billing independently of the pipeline.

Ids: partners ``p_0001`` .. ``p_NNNN``; organizations ``o_0003o0002`` (partner 3, organization 2);
targets ``t_0003u000017`` (partner 3, target 17).

Partner roles (by position; with fewer partners the later roles simply do not exist)::

    p_0001  per_user, autotask, eligible   BullPhish anomalies (see below); the designated hold
    p_0002  per_organization, bms, eligible  one exact duplicate target every day
    p_0003  per_user         kaseyaone.activated = false       (skipped, rule 1)
    p_0004  per_organization psa = null                        (skipped, rule 1)
    p_0005  per_user         unified_login_enabled = false     (skipped, rule 1)
    p_0006  per_organization joins integrated billing: activated false before today-3,
            true from today-3 on (as_of today-4 skipped, today-3 billed)
    p_0007  per_user, bms, eligible, but NOT linked in KaseyaOne: POST usage gets
            422 partner_not_linked and its organization mappings 404
    p_0008  per_organization, autotask, eligible; its organization o_0008o0002 is unknown to
            KaseyaOne: every metric for it is rejected ``organization_not_linked``
    p_0009+ ordinary: subscription and PSA hashed from the seed; about 1 in 10 fails one
            prerequisite (hashed) and is then not linked either; otherwise clean.

KaseyaOne knows (links) exactly the partners eligible as of yesterday, except p_0007. Partners
p_0002 and p_0009+ (when eligible) deliver with no rejection, so a run limited to them is clean.

Organizations of every partner: o_XXXXo0001 and o_XXXXo0002 exist for the whole history and are
never archived; others may be created within the last 60 days (absent from earlier as_of
lists; p_0001's all exist through the whole window, so its record count is the same every
day), may be archived from a date within the last 120 days (status flips to ``archived``),
and about 1 in 5 (from the third on) is a sub-organization of an earlier one. Module switches
are constant over 45-day (training_awareness) and 35-day (phishing) periods with per-organization
phase, so they switch on some days. Organization mappings: o_XXXXo0003 is always unmapped and
about 1 in 10 of the rest as well; unknown organizations (above) are never mapped.

Targets: about ``targets_per_organization`` per organization (uneven, exact total), of archived
organizations too. A target's status is constant over a 30-day period with per-target phase
(active with probability 0.85), so a few targets switch every day; ``updated_at`` is the start
of the current period (dormant users below excepted). Email and names are obviously fake
personal data (``alice.smith+t_0001u000001@example-msp.test``).

Deliberate anomalies (always present, independent of ``malformed_rate``):

* p_0001, every day: one extra target (``t_0001u<N+1>``, status active) whose
  ``organization_id`` is ``o_0002o0001``, an organization of ANOTHER partner: quarantined as
  unknown organization (rule 6). Placed in the middle of the list.
* p_0001, on yesterday (today-1) only: its first target ``t_0001u000001`` (of ``o_0001o0001``)
  is served twice with conflicting status, ``active`` at its place and ``inactive`` as the last
  record: every copy is quarantined (rule 7). With the default sizes (6 x 20) that makes 3 of
  128 records quarantined, above 1%: (p_0001, yesterday) is THE designated partner-date that
  the per-partner 1% threshold holds. On other days p_0001 has 1 of 127 (below 1%). With
  smaller sizes the single unknown-organization target may exceed 1% on every day.
* p_0002, every day: its first target ``t_0002u000001`` is served twice, identical, the
  second copy as the last record (a different page when the list spans pages): rule 7
  collapses it; nothing is quarantined.
* Dormant (stale) users, every partner: about 5% of the targets of o_XXXXo0001 (never the
  first) and 40% of those of o_XXXXo0002 are always ``active`` and were last updated before
  the history window (``updated_at`` at least 400 days before today): the stale active users
  that ``stale_active_targets`` counts.

These records are never malformed. With ``malformed_rate > 0``, p_0002's second target
``t_0002u000002`` (when its first organization has two) has ``updated_at``
``0000-01-01T00:00:00Z`` every day: ISO 8601 in form, but no real day (the contract's date-time
format refuses it); the pipeline keeps and counts the target, storing the date-time as null
with its reason. And a record is corrupted when
``unit(seed, record, date) < malformed_rate``; the corruption (a missing field, a wrong type,
a value outside the contract such as ``status: "deleted"`` or an id not matching the pattern)
is hashed too. Organization ids are never corrupted, so a malformed organization is still
recognisable (rule 7 holds it; its targets are neither counted nor quarantined).
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from bullphish_billing.sandbox._hashing import h, h_np, pick, unit, unit_np
from bullphish_billing.sandbox.config import SandboxConfig

__all__ = ["World", "PARTNER_ROLES"]

PARTNER_ROLES: dict[int, str] = {
    1: "anomalies",
    2: "duplicates",
    3: "not_activated",
    4: "no_psa",
    5: "no_unified_login",
    6: "joins",
    7: "unlinked",
    8: "unlinked_org",
}
"""Partner position (1-based) -> role; every other partner is ``"ordinary"``."""

_ROLE_PROFILES: dict[str, tuple[str, str | None]] = {
    "anomalies": ("per_user", "autotask"),
    "duplicates": ("per_organization", "bms"),
    "not_activated": ("per_user", "bms"),
    "no_psa": ("per_organization", None),
    "no_unified_login": ("per_user", "autotask"),
    "joins": ("per_organization", "autotask"),
    "unlinked": ("per_user", "bms"),
    "unlinked_org": ("per_organization", "autotask"),
}
"""Role -> (subscription_type, psa) of the designated partners."""

JOIN_DAYS_AGO = 3
TARGET_PERIOD = 30
TRAINING_PERIOD = 45
PHISHING_PERIOD = 35
EMAIL_DOMAIN = "example-msp.test"

# Salts: one per kind of generated fact, so facts never share a hash.
(
    _S_PNAME,
    _S_PSUB,
    _S_PPSA,
    _S_PFAIL,
    _S_PUPD,
    _S_ONAME,
    _S_OCREATED,
    _S_ORECENT,
    _S_OSUB,
    _S_OPARENT,
    _S_OARCH,
    _S_OPHASE_T,
    _S_OPHASE_P,
    _S_OTRAIN,
    _S_OPHISH,
    _S_OEXT,
    _S_OMAL,
    _S_OMALK,
    _S_TWEIGHT,
    _S_TFIRST,
    _S_TLAST,
    _S_TNULL_F,
    _S_TNULL_L,
    _S_TTOD,
    _S_TPHASE,
    _S_TSTATUS,
    _S_TEXT,
    _S_TMAL,
    _S_TMALK,
    _S_UNMAP,
    _S_COMPANY,
    _S_OTOD,
    _S_TDORMANT,
) = range(101, 134)

_FIRST = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "uma", "victor", "wendy",
    "xavier", "yvonne", "zoe", "liam", "noah", "emma", "ava", "mia", "lucas", "ella",
)  # fmt: skip
_LAST = (
    "smith", "johnson", "brown", "garcia", "miller", "davis", "wilson", "moore", "taylor",
    "anderson", "thomas", "jackson", "white", "harris", "martin", "thompson", "young", "king",
    "wright", "lopez", "hill", "scott", "green", "adams", "baker", "nelson", "carter", "reed",
)  # fmt: skip
_COMPANY_A = (
    "Acme", "Blue Ridge", "Cedar", "Delta", "Evergreen", "Falcon", "Granite", "Harbor",
    "Iron Gate", "Juniper", "Keystone", "Lakeside", "Maple", "Northwind", "Oakridge", "Pioneer",
    "Quartz", "Redwood", "Summit", "Trident", "Union", "Vertex", "Willow", "Zenith",
)  # fmt: skip
_COMPANY_B = (
    "Dental", "Logistics", "Legal", "Realty", "Manufacturing", "Accounting", "Clinic",
    "Builders", "Foods", "Insurance", "Energy", "Design", "Motors", "Pharmacy", "Academy",
)  # fmt: skip
_COMPANY_C = ("LLC", "Inc.", "Group", "Partners", "Co.", "Ltd.")
_MSP_A = (
    "Bright", "Secure", "Nimbus", "Vector", "Atlas", "Beacon", "Citadel", "Sentinel",
    "Horizon", "Bastion", "Crescent", "Polaris",
)  # fmt: skip
_MSP_B = ("IT", "Networks", "Technology", "Managed Services", "Systems", "Cyber", "Tech")
_MSP_C = ("Solutions", "Group", "Partners", "LLC", "Inc.")

# "HH:MM:SSZ" suffixes, indexed by minute of the day.
_TODS = tuple(f"T{m // 60:02d}:{m % 60:02d}:{(m * 7) % 60:02d}Z" for m in range(1440))
_TOD_TAILS = tuple(tod.encode() + b'"}' for tod in _TODS)  # a record's end, without external_ref


@dataclass(frozen=True)
class _PartnerSpec:
    index: int
    id: str
    role: str
    name: str
    subscription_type: str
    psa: str | None
    activated: bool
    unified_login_enabled: bool
    join_ord: int | None
    updated_ord: int
    updated_tod: str
    external_ref: str | None


@dataclass(frozen=True)
class _OrgSpec:
    k: int
    id: str
    name: str
    parent_id: str | None
    created_ord: int
    created_at: str
    archive_ord: int | None
    phase_training: int
    phase_phishing: int
    external_ref: str | None


@dataclass(frozen=True)
class _TargetStatic:
    """What never changes about a partner's targets, as parallel lists/arrays. Their fixed
    fields are kept as JSON only (`heads`, `tails`): the bytes served every day, in less than
    half the memory of a string per field (258 MB a million targets, against 627)."""

    count: int
    index: np.ndarray  # 0..count-1 (int64)
    phase: np.ndarray  # int64
    created_ord: np.ndarray  # int64: creation ordinal of the target's organization
    first_org_count: int  # targets of o_XXXXo0001 (the first ones in order)
    dormant: np.ndarray  # bool: active and untouched since `dormant_ord` (stale users)
    dormant_ord: np.ndarray  # int64: the dormant targets' last update (ordinal)
    # each target's JSON around its two daily fields (see World._clean_json): up to the
    # status's opening quote, and from updated_at's time of day to the closing brace
    heads: list[bytes]
    tails: list[bytes]


@dataclass(frozen=True)
class _TargetDay:
    """A partner's targets on one day: which are served (`js`, in order), status, update."""

    static: _TargetStatic
    visible: np.ndarray  # bool by target
    js: range | list[int]
    active: list[bool]  # by target
    updated: list[int]  # by target: the ordinal of its updated_at

    def positions(self) -> Callable[[int], int]:
        """Where target j is among the served records (j itself when every one is served)."""
        if isinstance(self.js, range):
            return lambda j: j
        return dict(zip(self.js, range(len(self.js)), strict=True)).__getitem__


STATIC_TARGETS = 2_000_000
"""How many targets' fixed part (their JSON around the daily fields, phases, creation dates)
the world keeps between dates."""


def _iso(ordinal: int, tod: str) -> str:
    return datetime.date.fromordinal(ordinal).isoformat() + tod


class World:
    """The sandbox's generated partners, organizations, targets and KaseyaOne links.

    Construction is instant; data is generated on demand per (partner, as_of) and the static
    part of each partner (its targets as JSON around their daily fields) is kept in LRU
    caches. ``today`` is resolved once here from the config. Public methods are safe to call
    from any thread.
    """

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.today: datetime.date = config.resolve_today()
        self.yesterday: datetime.date = self.today - datetime.timedelta(days=1)
        self._today_ord = self.today.toordinal()
        self._seed = config.seed
        self._specs = [self._partner_spec(i) for i in range(1, config.partners + 1)]
        self._by_id = {spec.id: spec for spec in self._specs}
        self._org_specs: Callable[[int], list[_OrgSpec]] = functools.lru_cache(maxsize=1024)(
            self._build_org_specs
        )
        # every partner's fixed part up to STATIC_TARGETS targets (about 260 MB a million),
        # else as many partners as that holds: a date's lists are generated from it
        per_partner = max(1, config.organizations_per_partner * config.targets_per_organization)
        self._target_static: Callable[[int], _TargetStatic] = functools.lru_cache(
            maxsize=max(16, STATIC_TARGETS // per_partner)
        )(self._build_target_static)

    # ------------------------------------------------------------------ public: BullPhish ID
    def partner_ids(self) -> list[str]:
        """Every partner id, in serving order."""
        return [spec.id for spec in self._specs]

    def has_partner(self, partner_id: str) -> bool:
        return partner_id in self._by_id

    def partner_role(self, partner_id: str) -> str:
        """The partner's designated role (see the module docstring), e.g. ``"unlinked"``."""
        return self._spec(partner_id).role

    @property
    def hold_partner_date(self) -> tuple[str, datetime.date] | None:
        """The designated partner-date with a conflicting duplicate (p_0001, yesterday)."""
        return ("p_0001", self.yesterday) if self._specs else None

    def partners(self, as_of: datetime.date) -> list[dict[str, Any]]:
        """The partner records served for ``as_of``, in serving order."""
        return [self._partner_record(spec, as_of.toordinal()) for spec in self._specs]

    def organizations(self, partner_id: str, as_of: datetime.date) -> list[dict[str, Any]]:
        """The partner's organization records served for ``as_of`` (malformed ones included)."""
        spec = self._spec(partner_id)
        day = as_of.toordinal()
        records = []
        for org in self._org_specs(spec.index):
            if org.created_ord > day:
                continue
            record = self._org_record(spec.index, org, day)
            rate = self.config.malformed_rate
            if rate > 0 and unit(self._seed, _S_OMAL, spec.index, org.k, day) < rate:
                _corrupt_org(record, h(self._seed, _S_OMALK, spec.index, org.k, day))
            records.append(record)
        return records

    def targets(self, partner_id: str, as_of: datetime.date) -> list[dict[str, Any]]:
        """The partner's target records served for ``as_of`` (anomalies and malformed included)."""
        spec = self._spec(partner_id)
        return self._targets(spec, as_of.toordinal())

    # ------------------------------------------------------------------ public: KaseyaOne
    def is_partner_linked(self, partner_id: str) -> bool:
        """Whether KaseyaOne knows the partner (else POST usage is 422 partner_not_linked)."""
        spec = self._by_id.get(partner_id)
        if spec is None or spec.role == "unlinked":
            return False
        return self._eligible(spec, self.yesterday.toordinal())

    def linked_organization_ids(self, partner_id: str) -> set[str]:
        """The partner's organizations KaseyaOne knows (others: ``organization_not_linked``)."""
        spec = self._by_id.get(partner_id)
        if spec is None or not self.is_partner_linked(partner_id):
            return set()
        return {org.id for org in self._org_specs(spec.index) if not self._org_unlinked(spec, org)}

    def organization_mappings(self, partner_id: str) -> list[dict[str, Any]]:
        """The partner's OrganizationMapping records (some organizations deliberately unmapped)."""
        spec = self._by_id.get(partner_id)
        if spec is None or not self.is_partner_linked(partner_id):
            return []
        psa = spec.psa  # linked partners are eligible, so they have a PSA
        mappings = []
        for org in self._org_specs(spec.index):
            if self._org_unlinked(spec, org) or self._org_unmapped(spec, org):
                continue
            company = h(self._seed, _S_COMPANY, spec.index, org.k)
            company_id = (
                str(10000 + company % 90000) if psa == "autotask" else f"BMS-{company % 100000:05d}"
            )
            mappings.append(
                {
                    "module_organization_id": org.id,
                    "psa": psa,
                    "psa_company_id": company_id,
                    "psa_company_name": org.name,
                }
            )
        return mappings

    # ------------------------------------------------------------------ partners
    def _spec(self, partner_id: str) -> _PartnerSpec:
        try:
            return self._by_id[partner_id]
        except KeyError:
            raise KeyError(f"unknown partner {partner_id!r}") from None

    def _partner_spec(self, i: int) -> _PartnerSpec:
        seed = self._seed
        role = PARTNER_ROLES.get(i, "ordinary")
        sub, psa = _ROLE_PROFILES.get(role) or (
            pick(("per_user", "per_organization"), seed, _S_PSUB, i),
            pick(("autotask", "bms"), seed, _S_PPSA, i),
        )
        activated = role != "not_activated"
        unified = role != "no_unified_login"
        if role == "ordinary" and unit(seed, _S_PFAIL, i) < 0.1:
            failing = h(seed, _S_PFAIL, i, 1) % 3  # one prerequisite: activated, psa, unified
            activated, unified = failing != 0, failing != 2
            psa = None if failing == 1 else psa
        join_ord = self._today_ord - JOIN_DAYS_AGO if role == "joins" else None
        name = " ".join(
            (pick(_MSP_A, seed, _S_PNAME, i, 1), pick(_MSP_B, seed, _S_PNAME, i, 2),
             pick(_MSP_C, seed, _S_PNAME, i, 3))
        )  # fmt: skip
        updated_ord = self._today_ord - 30 - h(seed, _S_PUPD, i) % 300
        return _PartnerSpec(
            index=i,
            id=f"p_{i:04d}",
            role=role,
            name=name,
            subscription_type=sub,
            psa=psa,
            activated=activated,
            unified_login_enabled=unified,
            join_ord=join_ord,
            updated_ord=updated_ord,
            updated_tod=_TODS[h(seed, _S_PUPD, i, 1) % 1440],
            external_ref=f"msp-{h(seed, _S_PNAME, i, 9) % 10**6:06d}" if i % 3 == 0 else None,
        )

    def _activated(self, spec: _PartnerSpec, day: int) -> bool:
        if spec.join_ord is not None:
            return day >= spec.join_ord
        return spec.activated

    def _eligible(self, spec: _PartnerSpec, day: int) -> bool:
        return self._activated(spec, day) and spec.psa is not None and spec.unified_login_enabled

    def _partner_record(self, spec: _PartnerSpec, day: int) -> dict[str, Any]:
        if spec.join_ord is not None and day >= spec.join_ord:
            updated = _iso(spec.join_ord, "T09:30:00Z")
        elif spec.updated_ord <= day:
            updated = _iso(spec.updated_ord, spec.updated_tod)
        else:  # an as_of older than the last change: some earlier day
            updated = _iso(day - spec.index % 7, spec.updated_tod)
        record: dict[str, Any] = {
            "id": spec.id,
            "name": spec.name,
            "subscription_type": spec.subscription_type,
            "kaseyaone": {
                "activated": self._activated(spec, day),
                "psa": spec.psa,
                "unified_login_enabled": spec.unified_login_enabled,
            },
            "updated_at": updated,
        }
        if spec.external_ref is not None:
            record["external_ref"] = spec.external_ref
        return record

    # ------------------------------------------------------------------ organizations
    def _build_org_specs(self, pi: int) -> list[_OrgSpec]:
        seed, today = self._seed, self._today_ord
        specs: list[_OrgSpec] = []
        # The designated partner keeps all its organizations through the history window, so
        # its record count (the 1% threshold's denominator) is the same every day.
        designated = self._specs[pi - 1].role == "anomalies"
        for k in range(1, self.config.organizations_per_partner + 1):
            stable = k <= 2
            if stable or designated:
                created = today - 400 - h(seed, _S_OCREATED, pi, k) % 700
            elif unit(seed, _S_ORECENT, pi, k) < 0.12:
                created = today - 1 - h(seed, _S_OCREATED, pi, k) % 60
            else:
                created = today - 60 - h(seed, _S_OCREATED, pi, k) % 1000
            parent_id = None
            if k >= 3 and unit(seed, _S_OSUB, pi, k) < 0.2:
                parent = specs[h(seed, _S_OPARENT, pi, k) % (k - 1)]
                parent_id = parent.id
                created = max(created, parent.created_ord)
            archive = None
            if not stable and unit(seed, _S_OARCH, pi, k) < 0.15:
                archive = max(created + 1, today - h(seed, _S_OARCH, pi, k, 1) % 120)
            name = " ".join(
                (pick(_COMPANY_A, seed, _S_ONAME, pi, k, 1),
                 pick(_COMPANY_B, seed, _S_ONAME, pi, k, 2),
                 pick(_COMPANY_C, seed, _S_ONAME, pi, k, 3))
            )  # fmt: skip
            ext = h(seed, _S_OEXT, pi, k)
            specs.append(
                _OrgSpec(
                    k=k,
                    id=f"o_{pi:04d}o{k:04d}",
                    name=name,
                    parent_id=parent_id,
                    created_ord=created,
                    created_at=_iso(created, _TODS[h(seed, _S_OTOD, pi, k) % 1440]),
                    archive_ord=archive,
                    phase_training=h(seed, _S_OPHASE_T, pi, k) % TRAINING_PERIOD,
                    phase_phishing=h(seed, _S_OPHASE_P, pi, k) % PHISHING_PERIOD,
                    external_ref=f"crm-{ext % 10**5:05d}" if ext % 5 == 0 else None,
                )
            )
        return specs

    def _org_record(self, pi: int, org: _OrgSpec, day: int) -> dict[str, Any]:
        seed = self._seed
        training_epoch = (day + org.phase_training) // TRAINING_PERIOD
        phishing_epoch = (day + org.phase_phishing) // PHISHING_PERIOD
        record: dict[str, Any] = {
            "id": org.id,
            "partner_id": f"p_{pi:04d}",
            "name": org.name,
            "parent_id": org.parent_id,
            "status": "archived"
            if org.archive_ord is not None and day >= org.archive_ord
            else "active",
            "modules": {
                "training_awareness": unit(seed, _S_OTRAIN, pi, org.k, training_epoch) < 0.85,
                "phishing": unit(seed, _S_OPHISH, pi, org.k, phishing_epoch) < 0.75,
            },
            "created_at": org.created_at,
        }
        if org.external_ref is not None:
            record["external_ref"] = org.external_ref
        return record

    def _org_unlinked(self, spec: _PartnerSpec, org: _OrgSpec) -> bool:
        return spec.role == "unlinked_org" and org.k == 2

    def _org_unmapped(self, spec: _PartnerSpec, org: _OrgSpec) -> bool:
        return org.k == 3 or (org.k > 3 and unit(self._seed, _S_UNMAP, spec.index, org.k) < 0.1)

    # ------------------------------------------------------------------ targets
    def _build_target_static(self, pi: int) -> _TargetStatic:
        seed = self._seed
        orgs = self._org_specs(pi)
        per_org = self.config.targets_per_organization
        total = len(orgs) * per_org
        # Uneven sizes with an exact total: weights in [0.3, 1.7), largest remainder.
        weights = np.array([0.3 + 1.4 * unit(seed, _S_TWEIGHT, pi, o.k) for o in orgs])
        if total:
            shares = weights / weights.sum() * total
            counts = np.floor(shares).astype(np.int64)
            short = total - int(counts.sum())
            counts[np.argsort(-(shares - counts), kind="stable")[:short]] += 1
        else:
            counts = np.zeros(len(orgs), dtype=np.int64)
        org_pos = np.repeat(np.arange(len(orgs)), counts)
        index = np.arange(total, dtype=np.int64)
        prefix = (seed, pi)
        firsts = [_FIRST[i] for i in (h_np((*prefix, _S_TFIRST), index) % len(_FIRST)).tolist()]
        lasts = [_LAST[i] for i in (h_np((*prefix, _S_TLAST), index) % len(_LAST)).tolist()]
        ids = [f"t_{pi:04d}u{j + 1:06d}" for j in range(total)]
        null_first = (unit_np((*prefix, _S_TNULL_F), index) < 0.04).tolist()
        null_last = (unit_np((*prefix, _S_TNULL_L), index) < 0.04).tolist()
        org_ids = [orgs[p].id for p in org_pos.tolist()]
        created = np.array([o.created_ord for o in orgs], dtype=np.int64)[org_pos]
        ext = h_np((*prefix, _S_TEXT), index)
        ext_js = np.flatnonzero(ext % np.uint64(10) == 0).tolist()
        # Dormant (stale) users: active, not updated since before the history window; only in
        # the two organizations that exist for the whole window (k 1, 2), never the anomaly
        # victim (target 0).
        k_of = np.array([o.k for o in orgs], dtype=np.int64)[org_pos]
        dormant_rate = np.select([k_of == 1, k_of == 2], [0.05, 0.4], 0.0)
        dormant = unit_np((*prefix, _S_TDORMANT), index) < dormant_rate
        dormant &= index != 0
        dormant_ord = np.minimum(
            created + (h_np((*prefix, _S_TDORMANT, 1), index) % 30).astype(np.int64),
            self._today_ord - 400,
        )
        emails = [
            f"{f}.{last}+{tid}@{EMAIL_DOMAIN}"
            for f, last, tid in zip(firsts, lasts, ids, strict=True)
        ]
        first_names = [
            None if n else f.capitalize() for f, n in zip(firsts, null_first, strict=True)
        ]
        last_names = [None if n else x.capitalize() for x, n in zip(lasts, null_last, strict=True)]
        tods = (h_np((*prefix, _S_TTOD), index) % 1440).tolist()
        tails = [_TOD_TAILS[m] for m in tods]
        for j in ext_js:  # the external reference is the record's last field
            ref = orjson.dumps(f"hr-{int(ext[j]) % 10**7:07d}")
            tails[j] = _TODS[tods[j]].encode() + b'","external_ref":' + ref + b"}"
        return _TargetStatic(
            count=total,
            index=index,
            phase=(h_np((*prefix, _S_TPHASE), index) % TARGET_PERIOD).astype(np.int64),
            created_ord=created,
            first_org_count=int(counts[0]) if len(counts) else 0,
            dormant=dormant,
            dormant_ord=dormant_ord,
            heads=[
                orjson.dumps(
                    {"id": i, "organization_id": o, "email": e, "first_name": f, "last_name": n}
                )[:-1]
                + b',"status":"'
                for i, o, e, f, n in zip(ids, org_ids, emails, first_names, last_names, strict=True)
            ],
            tails=tails,
        )

    def _target_day(self, spec: _PartnerSpec, day: int) -> _TargetDay:
        """Which of the partner's targets are served on `day`, their status and last update."""
        st = self._target_static(spec.index)
        visible = st.created_ord <= day
        epoch = (day + st.phase) // TARGET_PERIOD
        status = unit_np((self._seed, spec.index, _S_TSTATUS), st.index, epoch)
        return _TargetDay(
            static=st,
            visible=visible,
            js=range(st.count) if visible.all() else np.flatnonzero(visible).tolist(),
            active=((status < 0.85) | st.dormant).tolist(),
            updated=np.where(
                st.dormant,
                st.dormant_ord,
                np.maximum(epoch * TARGET_PERIOD - st.phase, st.created_ord),
            ).tolist(),
        )

    def _malformed(
        self, spec: _PartnerSpec, day: int, visible: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The served targets made malformed on `day` (a mask by target) and how (kinds)."""
        index = self._target_static(spec.index).index
        seed, pi = self._seed, spec.index
        bad = (unit_np((seed, pi, _S_TMAL), index, day) < self.config.malformed_rate) & visible
        return bad, h_np((seed, pi, _S_TMALK), index, day)

    def _clean_json(self, td: _TargetDay) -> list[bytes]:
        """The day's served targets as JSON, before any anomaly or malformation."""
        heads, tails, active, updated = td.static.heads, td.static.tails, td.active, td.updated
        dates = {o: datetime.date.fromordinal(o).isoformat().encode() for o in set(updated)}
        on, off = b'active","updated_at":"', b'inactive","updated_at":"'
        return [
            b"".join((heads[j], on if active[j] else off, dates[updated[j]], tails[j]))
            for j in td.js
        ]

    def target_json(self, partner_id: str, as_of: datetime.date) -> list[bytes]:
        """``targets(partner_id, as_of)``, each record as its JSON: what the sandbox serves,
        with no dict per record (the bulk of the data set, generated again for every date)."""
        spec = self._spec(partner_id)
        day = as_of.toordinal()
        if spec.role in ("anomalies", "duplicates") or self.config.malformed_rate > 0:
            # records moved, doubled, inserted or broken: as dicts (faulty sandboxes are small)
            return [orjson.dumps(record) for record in self._targets(spec, day)]
        return self._clean_json(self._target_day(spec, day))

    def _targets(self, spec: _PartnerSpec, day: int) -> list[dict[str, Any]]:
        td = self._target_day(spec, day)
        st, pi = td.static, spec.index
        records: list[dict[str, Any]] = [orjson.loads(part) for part in self._clean_json(td)]
        position = td.positions()

        # The anomaly victim is the partner's first target, of o_XXXXo0001, which exists for
        # the whole history window: it is record 0.
        has_victim = (
            spec.role in ("anomalies", "duplicates")
            and st.first_org_count > 0
            and bool(records)
            and records[0]["id"] == f"t_{pi:04d}u000001"
        )
        rate = self.config.malformed_rate
        if rate > 0 and records:
            bad, kinds = self._malformed(spec, day, td.visible)
            if has_victim:
                bad[0] = False
            if spec.role == "duplicates" and st.first_org_count > 1:
                bad[1] = False  # the year-0000 target below stays well formed
            for j in np.flatnonzero(bad).tolist():
                _corrupt_target(records[position(j)], int(kinds[j]))

        if spec.role == "anomalies":
            stray_id = f"t_{pi:04d}u{st.count + 1:06d}"
            stray = {
                "id": stray_id,
                "organization_id": f"o_{pi + 1:04d}o0001",
                "email": f"ghost.user+{stray_id}@{EMAIL_DOMAIN}",
                "first_name": "Ghost",
                "last_name": "User",
                "status": "active",
                "updated_at": _iso(day, "T06:00:00Z"),
            }
            if has_victim and day == self.yesterday.toordinal():
                records[0] = {**records[0], "status": "active"}
                records.append({**records[0], "status": "inactive"})
            records.insert(len(records) // 2 if len(records) > 1 else len(records), stray)
        elif spec.role == "duplicates" and has_victim:
            records.append(dict(records[0]))
            if rate > 0 and st.first_org_count > 1:  # a date-time naming no real day
                records[1]["updated_at"] = "0000-01-01T00:00:00Z"
        return records


# ---------------------------------------------------------------------- malformed records
def _corrupt_org(record: dict[str, Any], kind: int) -> None:
    """Make an organization record break the contract; its ``id`` stays intact."""
    variants = (
        lambda r: r.pop("status"),
        lambda r: r.pop("modules"),
        lambda r: r.pop("name"),
        lambda r: r.__setitem__("modules", {**r["modules"], "phishing": "yes"}),
        lambda r: r.__setitem__("status", 1),
        lambda r: r.__setitem__("status", "deleted"),
        lambda r: r.__setitem__("name", ""),
        lambda r: r.__setitem__("modules", {"training_awareness": True}),
        lambda r: r.__setitem__("parent_id", 7),
        lambda r: r.__setitem__("created_at", "2024-13-45T25:00:00Z"),
    )
    variants[kind % len(variants)](record)


def _corrupt_target(record: dict[str, Any], kind: int) -> None:
    """Make a target record break the contract."""
    variants = (
        lambda r: r.pop("status"),
        lambda r: r.pop("organization_id"),
        lambda r: r.pop("email"),
        lambda r: r.pop("id"),
        lambda r: r.__setitem__("status", 1),
        lambda r: r.__setitem__("status", "deleted"),
        lambda r: r.__setitem__("id", r["id"].replace("t_", "t-")),
        lambda r: r.__setitem__("organization_id", 42),
        lambda r: r.__setitem__("updated_at", "yesterday"),
        lambda r: r.__setitem__("email", None),
    )
    variants[kind % len(variants)](record)
