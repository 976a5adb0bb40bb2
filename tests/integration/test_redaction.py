"""The redactor (`bullphish_billing/clients/redaction.py`) and the bound on server text
(`bullphish_billing/text.py`): each form a secret takes on the wire is blanked out, ordinary
text is left alone, and what remains is one line of bounded length. Then the same through the
clients, against servers on loopback that echo requests back.
"""

from __future__ import annotations

import base64
import logging
import pickle
from datetime import date
from urllib.parse import quote, quote_plus, urlencode

import pytest
from loopback import error, form_of, json_response, serve
from pydantic import SecretStr
from secret_forms import b64, needles, wire_forms
from starlette.requests import Request
from starlette.responses import Response

from bullphish_billing.clients import (
    ApiError,
    BullPhishClient,
    FinalApiError,
    KaseyaOneClient,
    RetriesExhaustedError,
    RetryPolicy,
)
from bullphish_billing.clients.redaction import REDACTED, Redactor, min_prefix, redact
from bullphish_billing.text import MAX_TEXT, bounded

SECRET = "k1/S3c+Kn0wn S3cr&7y"  # characters that every encoding changes
CLIENT_ID = "client-1"
TOKEN_LIKE = "Zq3vX_9-aB0cD1eF2gH3iJ4kL5mN6oP7"  # an access token's alphabet
FAST = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.01, request_deadline_s=10)


def form_body(secret: str) -> str:
    return urlencode(
        {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": secret}
    )


FORMS = {
    "exact": lambda s: s,
    "lower-cased": str.lower,
    "upper-cased": str.upper,
    "case swapped": str.swapcase,
    "URL-encoded (quote)": quote,
    "URL-encoded, / too": lambda s: quote(s, safe=""),
    "URL-encoded, lower-case hex": lambda s: quote(s, safe="").lower(),
    "form-encoded (quote_plus)": quote_plus,
    "the token request's form body": form_body,
    "base64": b64,
    "base64, URL-safe": lambda s: base64.urlsafe_b64encode(s.encode()).decode(),
    "base64, no padding": lambda s: b64(s).rstrip("="),
    "base64, lower-cased": lambda s: b64(s).lower(),
    "HTTP Basic: base64(id:secret)": lambda s: "Basic " + b64(f"{CLIENT_ID}:{s}"),
    "base64 of the form body": lambda s: b64(form_body(s)),
    "the Authorization header": lambda s: f"Authorization: Bearer {s}",
    "a prefix of 8": lambda s: s[:8] + "...",
    "a prefix of half": lambda s: s[: len(s) // 2],
    "a lower-cased prefix": lambda s: s[:9].lower(),
    "a prefix of the form-encoded secret": lambda s: quote_plus(s)[:12],
}


@pytest.mark.parametrize("secret", [SECRET, TOKEN_LIKE])
@pytest.mark.parametrize("form", FORMS)
def test_every_form_of_a_secret_is_blanked_and_the_text_around_it_kept(form, secret):
    echoed = FORMS[form](secret)
    text = f"invalid_client: you sent <{echoed}> (request 7)"
    out = redact(text, [secret])
    assert REDACTED in out, out
    assert echoed.lower() not in out.lower()
    assert not [n for n in needles(secret, CLIENT_ID) if n in out.lower()], out
    assert out.startswith("invalid_client: you sent <") and out.endswith("> (request 7)")


def test_every_form_at_once_in_one_text():
    text = " | ".join(FORMS[form](SECRET) for form in FORMS)
    out = redact(text, [SECRET])
    assert not [n for n in needles(SECRET, CLIENT_ID) if n in out.lower()], out
    assert not [f for f in wire_forms(SECRET, CLIENT_ID) if f.lower() in out.lower()]


def test_a_prefix_below_the_minimum_and_ordinary_text_are_left_alone():
    assert [min_prefix(n) for n in (64, 20, 16, 12, 6, 3)] == [8, 8, 8, 6, 4, 3]
    assert redact(f"cut at {SECRET[:7]}", [SECRET]) == f"cut at {SECRET[:7]}"
    assert redact(f"cut at {SECRET[:8]}", [SECRET]) == f"cut at {REDACTED}"
    plain = "grant_type=client_credentials: Bearer token refused, see Basic auth"
    assert redact(plain, [SECRET, TOKEN_LIKE]) == plain
    assert redact("no secrets known", []) == "no secrets known"


def test_the_redactor_reads_each_secret_when_called_and_also_blanks_what_it_is_given():
    current = ["first-access-token-0123"]
    redactor = Redactor(lambda: SECRET, lambda: current[0], lambda: None)
    assert redactor(f"a {SECRET} b {current[0]}") == f"a {REDACTED} b {REDACTED}"
    stale, current[0] = current[0], "second-access-token-4567"
    assert stale in redactor(f"old {stale}")  # no longer current ...
    assert redactor(f"old {stale}", stale, None) == f"old {REDACTED}"  # ... unless given


def test_server_text_is_one_line_and_bounded_after_redaction():
    long = "x" * 295 + SECRET + "y" * 10_000  # a secret across the cut
    out = redact(long, [SECRET])
    assert out == "x" * 295 + REDACTED[:5] + "..."
    assert len(out) == MAX_TEXT + 3
    huge = f"{b64(SECRET)}\n\n" + "z" * 5_000_000  # megabytes from a server
    assert redact(huge, [SECRET]) == REDACTED + " " + "z" * (MAX_TEXT - 11) + "..."
    assert bounded("two\nlines\r\n\tand  spaces") == "two lines and spaces"
    once = bounded("w " * 1000)
    assert len(once) == MAX_TEXT + 3 and bounded(once) == once


# ---------------------------------------------------------------- through the clients
def echo(secret: str, client_id: str | None = None) -> str:
    return "you sent " + " | ".join(dict.fromkeys(wire_forms(secret, client_id)))


async def test_the_clients_blank_every_echoed_form_from_exceptions_and_logs(caplog):
    """KaseyaOne's token endpoint echoes its form body (as the error code) and the client
    secret in every form; BullPhish ID echoes its Authorization header and the token, plus
    10,000 characters: the exceptions, their pickles and the log lines hold none of it, and
    every message is bounded."""
    caplog.set_level(logging.DEBUG)
    token = "bp/T0k+Kn0wn S3cr&9x"

    async def handler(request: Request) -> Response:
        if request.url.path == "/oauth/token":
            form = await form_of(request)
            body = (await request.body()).decode()
            return error(403, body, echo(form["client_secret"], form["client_id"]))
        header = request.headers.get("authorization", "")
        return error(503, header, echo(header.removeprefix("Bearer ")) + " " + "!" * 10_000)

    with serve(handler) as url:
        async with (
            BullPhishClient(url, SecretStr(token), retry=FAST) as bp,
            KaseyaOneClient(url, CLIENT_ID, SecretStr(SECRET), retry=FAST) as k1,
        ):
            with pytest.raises(RetriesExhaustedError) as bp_info:
                await anext(bp.iter_partners(date(2024, 5, 1)))
            with pytest.raises(FinalApiError) as k1_info:
                await k1.list_billing_types()
    errors: list[ApiError] = [bp_info.value, k1_info.value]
    assert "you sent" in str(errors[0]) and "you sent" in str(errors[1])
    assert "client_secret=" + REDACTED in (errors[1].code or "")
    texts = [caplog.text] + [
        t for e in errors for t in (str(e), repr(e), str(pickle.loads(pickle.dumps(e))))
    ]
    hidden = needles(token) | needles(SECRET, CLIENT_ID)
    for text in texts:
        assert not [n for n in hidden if n in text.lower()], text
    for e in errors:
        assert len(e.message) <= MAX_TEXT + 3 and len(e.code or "") <= MAX_TEXT + 3
    assert "retrying" in caplog.text


async def test_kaseyaone_rejection_reasons_are_redacted_and_bounded():
    """A usage answer whose rejection reason echoes the access token the request carried."""

    async def handler(request: Request) -> Response:
        if request.url.path == "/oauth/token":
            return json_response(
                {"access_token": TOKEN_LIKE, "token_type": "Bearer", "expires_in": 3600}
            )
        header = request.headers["authorization"]
        reason = f"unknown_billing_type for {header} ({b64(TOKEN_LIKE).lower()}) " + "." * 999
        return json_response({"accepted": 0, "rejected": [{"index": 0, "reason": reason}],
                              "replayed": False})  # fmt: skip

    batch = {"module": "bullphish-id", "partner_id": "p_1", "usage_date": "2024-05-01",
             "metrics": [{"organization_id": "o_1", "billing_type": "x", "units": 1}]}  # fmt: skip
    with serve(handler) as url:
        async with KaseyaOneClient(url, CLIENT_ID, SecretStr(SECRET), retry=FAST) as k1:
            result = await k1.report_usage(batch, "key-1")
    [(index, reason)] = result.rejected
    assert index == 0 and reason.startswith(f"unknown_billing_type for Bearer {REDACTED} (")
    assert not [n for n in needles(TOKEN_LIKE) if n in reason.lower()], reason
    assert len(reason) == MAX_TEXT + 3
