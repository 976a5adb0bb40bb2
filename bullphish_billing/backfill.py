"""Backfill: the daily flow for every date of a range, oldest first, with a progress bar."""

from __future__ import annotations

import datetime as dt
import sys

from bullphish_billing.cli_progress import Progress


def date_range(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def backfill(start: dt.date, end: dt.date, partners: list[str] | None, dry_run: bool) -> int:
    """Run each date in turn; a date that fails does not stop the others. Return the exit code."""
    from bullphish_billing.cli import run_date

    days = date_range(start, end)
    worst = 0
    results: list[tuple[dt.date, int]] = []
    with Progress(len(days), label="backfill") as progress:
        for day in days:
            progress.describe(str(day))
            try:
                code = run_date(day, partners, dry_run, quiet=True)
            except Exception as exc:  # noqa: BLE001 - report and go on with the next date
                print(f"{day}: failed: {' '.join(str(exc).split())[:200]}", file=sys.stderr)
                code = 1
            results.append((day, code))
            worst = max(worst, code)
            progress.advance()
    problems = [str(d) for d, code in results if code]
    print(
        f"backfill {start}..{end}: {len(days)} date(s), "
        + (f"problems on {', '.join(problems)}" if problems else "all delivered")
    )
    return min(worst, 1) if worst != 2 else 2
