"""Command-line flags for ``bullphish-billing sandbox``: every SandboxConfig knob.

The CLI calls :func:`add_arguments` on its sub-parser, then :func:`config_from_args` on the
parsed namespace; the ports are ``ns.bullphish_port`` and ``ns.kaseyaone_port``. Out-of-range
values are refused by argparse itself (usage error, exit status 2).
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable

from bullphish_billing.sandbox.config import SandboxConfig

_DEFAULTS = SandboxConfig()


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port: {value}")
    return value


def _fraction(upper_inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (0.0 <= value <= 1.0 if upper_inclusive else 0.0 <= value < 1.0):
            bound = "[0, 1]" if upper_inclusive else "[0, 1)"
            raise argparse.ArgumentTypeError(f"must be in {bound}: {value}")
        return value

    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {value}")
    return value


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox's flags (data, faults, ports) to ``parser``."""
    data = parser.add_argument_group("generated data (deterministic for a seed and a --today)")
    data.add_argument(
        "--seed",
        type=int,
        default=_DEFAULTS.seed,
        help="seed of all generated data and fault draws (default %(default)s)",
    )
    data.add_argument(
        "--partners",
        type=_non_negative_int,
        default=_DEFAULTS.partners,
        help="number of partners (MSPs); with 8 or more every special case "
        "exists (default %(default)s)",
    )
    data.add_argument(
        "--organizations-per-partner",
        type=_non_negative_int,
        default=_DEFAULTS.organizations_per_partner,
        help="organizations (MSP customers) per partner (default %(default)s)",
    )
    data.add_argument(
        "--targets-per-organization",
        type=_non_negative_int,
        default=_DEFAULTS.targets_per_organization,
        help="targets (users) per organization on average; the partner total is "
        "exact (default %(default)s)",
    )
    data.add_argument(
        "--malformed-rate",
        type=_fraction(True),
        default=_DEFAULTS.malformed_rate,
        help="fraction of organization and target records served breaking the "
        "contract: missing field, wrong type, value outside it (default %(default)s)",
    )
    data.add_argument(
        "--today",
        type=_date,
        default=None,
        help="the sandbox's today (UTC), YYYY-MM-DD; as_of and usage_date must lie in "
        "today-400 .. today-1 (default: the real UTC date)",
    )

    data.add_argument(
        "--cache-mb",
        type=_positive_int,
        default=_DEFAULTS.cache_mb,
        metavar="MB",
        help="memory for pre-serialized lists; a list is generated once and served from "
        "memory while it fits, so give it about 250 MB per million targets read side by side "
        "(default %(default)s)",
    )

    faults = parser.add_argument_group("fault injection (random per request, seeded)")
    faults.add_argument(
        "--short-pages",
        action="store_true",
        help="serve pages with fewer records than limit, sometimes none while a "
        "next_cursor follows",
    )
    faults.add_argument(
        "--rate-429",
        type=_fraction(False),
        default=_DEFAULTS.rate_429,
        help="probability per request of 429 rate_limited with Retry-After 0 or 1 "
        "(default %(default)s)",
    )
    faults.add_argument(
        "--rate-5xx",
        type=_fraction(False),
        default=_DEFAULTS.rate_5xx,
        help="probability per request of a 500/502/503 before anything is changed "
        "(default %(default)s)",
    )
    faults.add_argument(
        "--rate-lost-response",
        type=_fraction(False),
        default=_DEFAULTS.rate_lost_response,
        help="probability that a usage POST is stored and then answered 5xx; a "
        "retry with the same Idempotency-Key is a replay (default %(default)s)",
    )
    faults.add_argument(
        "--drift-rate",
        type=_fraction(True),
        default=_DEFAULTS.drift_rate,
        help="KaseyaOne's store drifts after it acknowledged: the share of a partner-date's "
        "stored metrics dropped or changed after its first batch, and the chance it gains one "
        "metric nobody sent; seeded, once per partner-date, so that a reconciliation "
        "finds it (default %(default)s)",
    )
    faults.add_argument(
        "--latency-ms",
        type=_non_negative_float,
        default=_DEFAULTS.latency_ms,
        help="delay added to every request, in milliseconds (default %(default)s)",
    )
    faults.add_argument(
        "--token-lifetime",
        type=_positive_int,
        default=_DEFAULTS.token_lifetime_s,
        metavar="SECONDS",
        help="KaseyaOne access token lifetime (expires_in); an expired token gets "
        "401 invalid_token (default %(default)s)",
    )

    ports = parser.add_argument_group("ports (always on 127.0.0.1)")
    ports.add_argument(
        "--bullphish-port",
        type=_port,
        default=8701,
        help="BullPhish ID API port; 0 picks a free one (default %(default)s)",
    )
    ports.add_argument(
        "--kaseyaone-port",
        type=_port,
        default=8702,
        help="KaseyaOne API port; 0 picks a free one (default %(default)s)",
    )


def config_from_args(ns: argparse.Namespace) -> SandboxConfig:
    """The SandboxConfig the parsed flags describe (ports are not part of it)."""
    return SandboxConfig(
        seed=ns.seed,
        partners=ns.partners,
        organizations_per_partner=ns.organizations_per_partner,
        targets_per_organization=ns.targets_per_organization,
        short_pages=ns.short_pages,
        rate_429=ns.rate_429,
        rate_5xx=ns.rate_5xx,
        rate_lost_response=ns.rate_lost_response,
        latency_ms=ns.latency_ms,
        token_lifetime_s=ns.token_lifetime,
        malformed_rate=ns.malformed_rate,
        today=ns.today,
        cache_mb=ns.cache_mb,
        drift_rate=ns.drift_rate,
    )
