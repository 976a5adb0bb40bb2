"""Secrets and personal data: a run with known secrets against a faulty sandbox, then every
place the run writes is searched: the terminal (at DEBUG level), the Prefect API (the flow
run, its task runs, logs and artifacts) and Prefect's database file, the warehouse (every
text column of every table) and every file the run left beside it.

Also: the settings hold the secrets as SecretStr, and the sandbox refuses every endpoint
without a token. (Elsewhere: `tests/integration/test_clients.py::test_secrets_never_reach_messages_reprs_or_logs`
redacts server-echoed secrets from exceptions and logs; `tests/integration/test_cli.py` checks a clean run's
files and a wrong credential's one-line error; `tests/integration/test_sandbox_servers.py::
test_starts_fast_on_loopback_and_stops_clean` checks that the sandbox listens on 127.0.0.1 only.)
"""

from __future__ import annotations

import datetime as dt
import pickle
import re
import socket
from uuid import UUID

import duckdb
import httpx
import pytest
from fault_tools import prefect_api_url  # noqa: F401 - fixture
from places import prefect_database_files, prefect_records, record_issued_tokens, warehouse_text
from sandbox_env import child_env, output, run_cli
from test_daily_flow import assert_no_personal_data

from bullphish_billing.dates import yesterday_utc
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

TOKEN = "tok-7Hq2-bullphish-KNOWNSECRET"
CLIENT_SECRET = "sec-9Wx4-kaseyaone-KNOWNSECRET"
FAULTY = SandboxConfig(
    seed=11,
    partners=10,
    short_pages=True,
    rate_429=0.1,
    rate_5xx=0.1,
    rate_lost_response=0.1,
    token_lifetime_s=1,
    malformed_rate=0.02,
    bullphish_token=TOKEN,
    kaseyaone_client_secret=CLIENT_SECRET,
)


@pytest.mark.timeout(300)
def test_no_secret_and_no_personal_data_anywhere_a_faulty_run_writes(
    tmp_path,
    prefect_api_url,  # noqa: F811
):
    day = yesterday_utc() - dt.timedelta(days=2)
    warehouse = tmp_path / "warehouse.duckdb"
    with RunningSandbox(FAULTY) as sandbox:
        issued = record_issued_tokens(sandbox)  # KaseyaOne access tokens: secrets too
        env = child_env(
            sandbox,
            warehouse,
            prefect_api_url,
            PREFECT_LOGGING_LEVEL="DEBUG",
            BILLING_HOLD_THRESHOLD="0.05",
        )
        result = run_cli(["run", "--date", day.isoformat()], env, tmp_path)
        terminal = output(result)
        assert result.returncode == 1, terminal  # unlinked partner, rejections, quarantine
        assert "Traceback" not in terminal
        assert sum(sandbox.bullphish_app.state.faults.injected.values()) > 0
        assert len(issued) > 1  # tokens expired and were fetched again
        assert any(r.status == 422 for r in sandbox.kaseyaone.requests)  # error paths ran
    flow_run_id = UUID(re.search(r"/runs/flow-run/([0-9a-f-]{36})", terminal).group(1))

    secrets = [TOKEN, CLIENT_SECRET, *issued]
    places = {
        "terminal": terminal,
        "prefect api": "\n".join(prefect_records(flow_run_id)),
        "warehouse": warehouse_text(warehouse),
    }
    # the search saw the run's logs and artifacts (partner outcomes, the issues note)
    assert "billable" in places["prefect api"] and "partner_not_linked" in places["prefect api"]
    for place, text in places.items():
        for secret in secrets:
            assert secret not in text, f"a secret in the {place}"
    files = [p for p in tmp_path.rglob("*") if p.is_file()] + prefect_database_files()
    assert any(p.name == "warehouse.duckdb" for p in files)
    for path in files:
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, path

    # rule 10: no email-shaped value in any text column of any table (faulty records included)
    assert_no_personal_data(warehouse)
    with duckdb.connect(str(warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM ops.quarantine").fetchall()[0][0] > 0
    assert "@example-msp.test" not in terminal + places["prefect api"]


def test_settings_hold_secrets_as_secret_types(monkeypatch):
    from bullphish_billing.settings import load_settings

    monkeypatch.setenv("BULLPHISH_API_TOKEN", TOKEN)
    monkeypatch.setenv("KASEYAONE_CLIENT_SECRET", CLIENT_SECRET)
    settings = load_settings()
    assert settings.bullphish_api_token.get_secret_value() == TOKEN
    shown = [repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())]
    for text in shown:
        assert TOKEN not in text and CLIENT_SECRET not in text
    # Prefect hands the settings to tasks; a copy keeps them secret, and usable
    copy = pickle.loads(pickle.dumps(settings))
    assert copy.kaseyaone_client_secret.get_secret_value() == CLIENT_SECRET
    assert CLIENT_SECRET not in repr(copy)


def test_the_sandbox_refuses_every_endpoint_without_a_token_and_listens_on_loopback_only():
    with RunningSandbox(SandboxConfig(partners=3)) as sandbox:
        bp, k1 = sandbox.bullphish_url, sandbox.kaseyaone_url
        refused = [
            httpx.get(f"{bp}/v1/partners"),
            httpx.get(f"{bp}/v1/partners/p_0001/organizations"),
            httpx.get(f"{bp}/v1/partners/p_0001/targets"),
            httpx.get(f"{k1}/v1/billing/billing-types", params={"module": "bullphish-id"}),
            httpx.get(
                f"{k1}/v1/billing/usage",
                params={"module": "bullphish-id", "partner_id": "p_0001", "usage_date": "x"},
            ),
            httpx.get(
                f"{k1}/v1/partners/p_0001/organization-mappings", params={"module": "bullphish-id"}
            ),
            httpx.post(
                f"{k1}/v1/billing/usage",
                json={"module": "bullphish-id", "partner_id": "p_0001", "metrics": []},
                headers={"Idempotency-Key": "k"},
            ),
        ]
        assert [r.status_code for r in refused] == [401] * len(refused)
        no_secret = httpx.post(
            f"{k1}/oauth/token",
            data={"grant_type": "client_credentials", "client_id": "sandbox-client"},
        )
        assert no_secret.status_code in (400, 401) and "access_token" not in no_secret.text
        assert sandbox.kaseyaone.stored() == []
        for url in (bp, k1):
            host, port = url.removeprefix("http://").split(":")
            assert host == "127.0.0.1"
            with pytest.raises(OSError):  # another address of this host: nothing listens
                socket.create_connection(("127.0.0.2", int(port)), timeout=1).close()
