"""Helpers shared by the backfill and overlap tests: configuration for a running sandbox, and
what KaseyaOne's sandbox holds and was sent."""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from pathlib import Path

from bullphish_billing.sandbox import RunningSandbox


def sandbox_env(sandbox: RunningSandbox, warehouse: Path) -> dict[str, str]:
    c = sandbox.config
    return {
        "BULLPHISH_API_URL": sandbox.bullphish_url,
        "BULLPHISH_API_TOKEN": c.bullphish_token,
        "KASEYAONE_API_URL": sandbox.kaseyaone_url,
        "KASEYAONE_CLIENT_ID": c.kaseyaone_client_id,
        "KASEYAONE_CLIENT_SECRET": c.kaseyaone_client_secret,
        "BILLING_WAREHOUSE": str(warehouse),
    }


def child_env(sandbox: RunningSandbox, warehouse: Path, prefect_home: Path) -> dict[str, str]:
    """The environment of a `python -m bullphish_billing` child process. When the test
    harness runs, the child talks to its server (no ephemeral server to start: ~10 s less)."""
    import prefect.settings

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BULLPHISH_", "KASEYAONE_", "BILLING_", "PREFECT_API"))
    }
    env |= sandbox_env(sandbox, warehouse) | {"PREFECT_HOME": str(prefect_home)}
    api = prefect.settings.PREFECT_API_URL.value()
    if api:
        env["PREFECT_API_URL"] = api
    return env


def stored(sandbox: RunningSandbox, day: dt.date) -> dict[tuple[str, str, str], int]:
    """What KaseyaOne's sandbox holds for a date: (partner, organization, type) -> units."""
    return {
        (m["partner_id"], m["organization_id"], m["billing_type"]): m["units"]
        for m in sandbox.kaseyaone.stored(usage_date=day)
    }


def sends_per_key(sandbox: RunningSandbox) -> Counter:
    """How many times each Idempotency-Key changed KaseyaOne's store (replays excluded)."""
    return Counter(r.idempotency_key for r in sandbox.kaseyaone.sends())


def sends_per_partner_date(sandbox: RunningSandbox) -> Counter:
    """How many batches changed KaseyaOne's store, per (partner, usage date)."""
    return Counter((r.body["partner_id"], r.body["usage_date"]) for r in sandbox.kaseyaone.sends())
