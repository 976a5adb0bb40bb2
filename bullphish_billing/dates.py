"""Usage dates: UTC days."""

from __future__ import annotations

import datetime as dt

from bullphish_billing.text import shown

HISTORY_DAYS = 400  # both APIs keep (and accept) 400 days


def today_utc() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def yesterday_utc() -> dt.date:
    return today_utc() - dt.timedelta(days=1)


def parse_date(text: str) -> dt.date:
    """A YYYY-MM-DD date; ValueError with a readable message otherwise."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date (YYYY-MM-DD): {shown(text)}") from None


def check_usage_date(day: dt.date) -> None:
    """A billable usage date: not after yesterday, not older than the APIs' history."""
    if day > yesterday_utc():
        raise ValueError(f"{day} is after yesterday ({yesterday_utc()}, UTC): not billable yet")
    oldest = today_utc() - dt.timedelta(days=HISTORY_DAYS)
    if day < oldest:
        raise ValueError(f"{day} is older than the {HISTORY_DAYS}-day history (oldest {oldest})")
