"""The command line as a user meets it: exit codes, one-line errors, clean output, no secrets.

These run `python -m bullphish_billing` in a child process against the sandbox (served by
this test process on loopback). A clean run and the demo run as a user's would, on Prefect's
ephemeral server in a temporary home (started by the child: about 20 s each here); the other
runs use the test harness's Prefect server (`harness_env`), which the child need not start.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sandbox_env import child_env, run_cli, sandbox_env, scrubbed_environ

from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

SECRETS = SandboxConfig(
    bullphish_token="tok-Zq81-bullphish-VERYSECRET",
    kaseyaone_client_secret="sec-Pw55-kaseyaone-VERYSECRET",
)


def bare_env(tmp_path: Path) -> dict[str, str]:
    """No settings at all, and a Prefect home of its own (so an ephemeral server)."""
    return scrubbed_environ() | {"PREFECT_HOME": str(tmp_path / "prefect-home")}


@pytest.fixture(scope="module")
def sandbox():
    with RunningSandbox(SECRETS) as running:
        yield running


def cli_env(sandbox: RunningSandbox, tmp_path: Path) -> dict[str, str]:
    return bare_env(tmp_path) | sandbox_env(sandbox, tmp_path / "wh.duckdb")


@pytest.fixture
def harness_env(prefect_harness):
    """`cli_env` on the test harness's Prefect server (`child_env` points the child at it)
    instead of an ephemeral one."""

    def env(sandbox: RunningSandbox, tmp_path: Path) -> dict[str, str]:
        return child_env(sandbox, tmp_path / "wh.duckdb", prefect_home=tmp_path / "prefect-home")

    return env


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    ours = [line for line in result.stderr.splitlines() if line.startswith("bullphish-billing")]
    assert len(ours) == 1 and "error:" in ours[0], result.stderr  # Prefect may log around it
    for word in words:
        assert word in ours[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "--date", "2026-02-30"], ["not a date"]),
        (["run", "--date", "2999-01-01"], ["after yesterday"]),
        (["run", "--date", "2001-01-01"], ["400-day history"]),
        (["backfill", "--start", "2026-11-02", "--end", "2026-11-01"], ["before --start"]),
        (["run"], ["missing configuration", "BULLPHISH_API_URL"]),
        (["frobnicate"], ["invalid choice"]),
    ],
)
def test_usage_and_configuration_errors_exit_2_with_one_line(tmp_path, args, words):
    assert_one_line_error(run_cli(args, bare_env(tmp_path), tmp_path), *words)


def test_a_bad_setting_is_named(tmp_path, sandbox):
    env = cli_env(sandbox, tmp_path) | {"BILLING_HOLD_THRESHOLD": "lots"}
    assert_one_line_error(run_cli(["run"], env, tmp_path), "BILLING_HOLD_THRESHOLD")


def test_every_command_explains_itself(tmp_path):
    for command in ("run", "backfill", "sandbox", "demo", "explain"):
        result = run_cli([command, "--help"], bare_env(tmp_path), tmp_path)
        assert result.returncode == 0 and "usage:" in result.stdout and len(result.stdout) > 200


def test_a_clean_run_exits_0_with_no_traceback_or_error_and_no_secret(tmp_path, sandbox):
    env = cli_env(sandbox, tmp_path)
    result = run_cli(["run", "--partner", "p_0002", "--partner", "p_0009"], env, tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Traceback" not in out and "| ERROR" not in out and "WARNING" not in out
    assert "2 delivered" in out
    for secret in (SECRETS.bullphish_token, SECRETS.kaseyaone_client_secret):
        assert secret not in out
        for path in tmp_path.rglob("*"):  # warehouse, Prefect's database, logs, artifacts
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def test_held_or_rejected_work_exits_1(tmp_path, sandbox, harness_env):
    result = run_cli(["run"], harness_env(sandbox, tmp_path), tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "held" in result.stdout and "partial" in result.stdout


def test_an_unknown_partner_exits_2_before_any_work(tmp_path, sandbox, harness_env):
    before = len(sandbox.kaseyaone.requests)
    result = run_cli(["run", "--partner", "p_9999"], harness_env(sandbox, tmp_path), tmp_path)
    assert_one_line_error(result, "unknown partner p_9999")
    assert len(sandbox.kaseyaone.requests) == before


@pytest.mark.parametrize("variable", ["BULLPHISH_API_TOKEN", "KASEYAONE_CLIENT_SECRET"])
def test_a_wrong_credential_exits_2_naming_it_not_showing_it(
    tmp_path, sandbox, harness_env, variable
):
    env = harness_env(sandbox, tmp_path) | {variable: "not-the-right-one-XYZ"}
    result = run_cli(["run"], env, tmp_path)
    assert_one_line_error(result, variable)
    assert "not-the-right-one-XYZ" not in result.stdout + result.stderr


def test_demo_works_with_no_configuration(tmp_path):
    result = run_cli(["demo"], bare_env(tmp_path), tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Traceback" not in out and "| ERROR" not in out
    assert "KaseyaOne's sandbox now holds" in out and "prefect server start" in out
    assert (tmp_path / "data" / "demo" / "warehouse.duckdb").exists()
