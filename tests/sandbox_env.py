"""Helpers shared by the tests that run against a sandbox: its settings as environment variables,
the CLI in a child process, and what KaseyaOne's sandbox holds and was sent."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

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


def scrubbed_environ() -> dict[str, str]:
    """This process's environment without any of the project's settings or a Prefect API URL,
    so a child sees only what the test gives it."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BULLPHISH_", "KASEYAONE_", "BILLING_", "PREFECT_API"))
    }


def child_env(
    sandbox: RunningSandbox,
    warehouse: Path,
    prefect_api_url: str | None = None,
    *,
    prefect_home: Path | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a `python -m bullphish_billing` child process: the sandbox's
    settings, `extra` settings, and the Prefect API of `prefect_api_url` or else of the test
    harness when it runs (then the child starts no ephemeral server: ~10 s less)."""
    import prefect.settings

    env = scrubbed_environ() | sandbox_env(sandbox, warehouse)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    if prefect_home is not None:
        env["PREFECT_HOME"] = str(prefect_home)
    api = prefect_api_url or prefect.settings.PREFECT_API_URL.value()
    if api:
        env["PREFECT_API_URL"] = api
    return env | extra


def start_cli(args: list[str], env: dict[str, str], cwd: Path, **kwargs: Any) -> subprocess.Popen:
    """`python -m bullphish_billing ARGS` started in a child process, to read while it runs
    (`kwargs`: Popen's, e.g. stdout=subprocess.PIPE); text mode."""
    return subprocess.Popen(
        [sys.executable, "-m", "bullphish_billing", *args], env=env, cwd=cwd, text=True, **kwargs
    )


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path, **kwargs: Any
) -> subprocess.CompletedProcess:
    """`python -m bullphish_billing ARGS` in a child process, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "bullphish_billing", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        **kwargs,
    )


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


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


def passes_check(script: str) -> None:
    """Run scripts/<script>.py (a `make check-...` target) with no Prefect setting of this
    process, and fail the test unless every one of its checks passed."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{script}.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    result = subprocess.run(
        [sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=600
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert re.search(rf"{script.replace('_', '-')}: \[.*\] verdict: PASS", result.stdout), out
    assert "FAIL" not in result.stdout, out
