"""A server that echoes a request's credentials back in its error bodies, in every form they take
on the wire: exact, lower- and upper-cased, URL- and form-encoded, base64 (of the secret, of
`client_id:secret` as in HTTP Basic, of the Authorization header), and a prefix cut short.

A CLI run against such servers (tests/relay.py relays in front of the sandbox) must leave
no secret, in any of those forms, in the terminal, the warehouse, the analysts' file or Prefect
(its API and its database). The redactor's own tests are in `tests/integration/test_redaction.py`.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl
from uuid import UUID

import duckdb
import orjson
import pytest
from fault_tools import prefect_api_url  # noqa: F401 - fixture
from places import prefect_database_files, prefect_records, record_issued_tokens, warehouse_text
from relay import Exchange, Relay, Reply
from sandbox_env import child_env, output, run_cli
from secret_forms import b64, needles, wire_forms

from bullphish_billing.dates import yesterday_utc
from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

# secrets with characters that URL-encoding, form-encoding and case-folding all change
TOKEN = "bp/T0k+Kn0wn S3cr&9x"
CLIENT_ID = "echo-client"
CLIENT_SECRET = "k1/S3c+Kn0wn S3cr&7y"
SEED = 5  # partners=12: billable p_0001, p_0002, p_0007..p_0012 (p_0007 not linked)
DAY = yesterday_utc() - dt.timedelta(days=4)
MARK = "you sent"  # starts every echo message, to find where the echoes went


def echo(exchange: Exchange, status: int) -> Reply:
    """An error reply repeating the request's credential in every form: the message holds the
    forms (short enough to pass any cut of 300 characters), the code the raw credential (the
    token request's form body, or the Authorization header)."""
    if exchange.path == "/oauth/token":
        form = dict(parse_qsl(exchange.body.decode()))
        forms = wire_forms(form["client_secret"], form["client_id"])
        raw = exchange.body.decode()
    else:
        header = {k.lower(): v for k, v in exchange.headers.items()}.get("authorization", "")
        forms = [*wire_forms(header.removeprefix("Bearer ")), b64(header)]
        raw = f"Authorization: {header}"
    message = f"{MARK} " + " | ".join(dict.fromkeys(forms))
    assert len(message) <= 300, len(message)
    return Reply(status, orjson.dumps({"error": {"code": raw, "message": message}}))


class Echoes:
    """`respond` for a tests/relay.py Relay: `echo_status(method, path, n)` (n: the how-many-th
    request of that method and path, from 1) is the status of an echo to answer with instead of
    forwarding, or None to forward. `count` counts the echoes."""

    def __init__(self, echo_status: Callable[[str, str, int], int | None]) -> None:
        self.count = 0
        self._status = echo_status
        self._seen: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, exchange: Exchange) -> Reply | None:
        with self._lock:
            key = (exchange.method, exchange.path)
            self._seen[key] += 1
            status = self._status(exchange.method, exchange.path, self._seen[key])
            self.count += status is not None
        return None if status is None else echo(exchange, status)


def bullphish_echoes(method: str, path: str, n: int) -> int | None:
    """The partner list's first answer (a retry follows); every organizations request of
    p_0009 (final: the partner fails); every targets request of p_0010 (until its deadline)."""
    if path == "/v1/partners" and n == 1:
        return 503
    if path == "/v1/partners/p_0009/organizations":
        return 404
    if path == "/v1/partners/p_0010/targets":
        return 503
    return None


def kaseyaone_echoes(method: str, path: str, n: int) -> int | None:
    """The first token request (the credentials check) goes through; the second and third
    (delivery's token, and its retry) echo the token request's form body; the first
    billing-types request and p_0001's mappings echo the access token."""
    if path == "/oauth/token":
        return {2: 503, 3: 403}.get(n)
    if path == "/v1/billing/billing-types" and n == 1:
        return 503
    if path == "/v1/partners/p_0001/organization-mappings":
        return 403
    return None


def analysts_view(path: Path, view: str) -> str:
    with duckdb.connect(str(path), read_only=True) as con:
        return repr(con.execute(f"SELECT * FROM {view}").fetchall())


@pytest.mark.timeout(300)
def test_no_secret_in_any_form_a_server_echoes_reaches_any_place_a_run_writes(
    tmp_path,
    prefect_api_url,  # noqa: F811
):
    warehouse = tmp_path / "warehouse.duckdb"
    config = SandboxConfig(
        seed=SEED,
        partners=12,
        bullphish_token=TOKEN,
        kaseyaone_client_id=CLIENT_ID,
        kaseyaone_client_secret=CLIENT_SECRET,
    )
    bp_echoes, k1_echoes = Echoes(bullphish_echoes), Echoes(kaseyaone_echoes)
    with (
        RunningSandbox(config) as sandbox,
        Relay(sandbox.bullphish_url, bp_echoes) as bp,
        Relay(sandbox.kaseyaone_url, k1_echoes) as k1,
    ):
        issued = record_issued_tokens(sandbox)  # KaseyaOne access tokens: secrets too
        env = child_env(
            sandbox,
            warehouse,
            prefect_api_url,
            BULLPHISH_API_URL=bp.url,
            KASEYAONE_API_URL=k1.url,
            BILLING_HTTP_DEADLINE_S="2",
            PREFECT_LOGGING_LEVEL="DEBUG",
            PREFECT_LOGGING_ROOT_LEVEL="DEBUG",  # the clients' retry lines too
            PREFECT_LOGGING_EXTRA_LOGGERS="bullphish_billing",  # ... and to Prefect's API
        )
        result = run_cli(["run", "--date", DAY.isoformat()], env, tmp_path)
        terminal = output(result)
        assert result.returncode == 1, terminal
        assert "Traceback" not in terminal
        assert bp_echoes.count >= 3 and k1_echoes.count >= 4, (bp_echoes.count, k1_echoes.count)
        assert issued
    flow_run_id = UUID(re.search(r"/runs/flow-run/([0-9a-f-]{36})", terminal).group(1))

    analytics = tmp_path / "analytics.duckdb"
    places = {
        "terminal": terminal,
        "prefect api": "\n".join(prefect_records(flow_run_id)),
        "warehouse": warehouse_text(warehouse),
        "run_history": analysts_view(warehouse, "run_history"),
        "analysts' file": warehouse_text(analytics),
        "analysts' run_history": analysts_view(analytics, "run_history"),
    }
    # the echoes did reach every place: the search below is not vacuous
    for place, text in places.items():
        assert MARK in text, f"no echo reached the {place}"
    with duckdb.connect(str(warehouse), read_only=True) as con:
        reasons = dict(con.execute("SELECT partner_id, reason FROM ops.partner_runs").fetchall())
        errors = [e for (e,) in con.execute("SELECT error FROM ops.outbox").fetchall()]
    assert MARK in reasons["p_0009"] and MARK in reasons["p_0010"], reasons
    assert any("/oauth/token" in (e or "") and MARK in e for e in errors), errors

    hidden = sorted(
        needles(TOKEN)
        | needles(CLIENT_SECRET, CLIENT_ID)
        | set().union(*(needles(token) for token in issued))
    )
    leaks: dict[str, list[str]] = {}
    for place, text in places.items():
        folded = text.lower()
        leaks[place] = [n for n in hidden if n in folded]
    files = [p for p in tmp_path.rglob("*") if p.is_file()] + prefect_database_files()
    assert {"warehouse.duckdb", "analytics.duckdb"} <= {p.name for p in files}
    for path in files:
        folded = path.read_bytes().lower()
        leaks[str(path)] = [n for n in hidden if n.encode() in folded]
    leaks = {place: found for place, found in leaks.items() if found}
    assert not leaks, "secrets found: " + "; ".join(f"{p}: {len(f)}" for p, f in leaks.items())
