"""The forms a secret takes on the wire, for the tests that make servers echo them and then
search for them: `wire_forms` to echo, `needles` to search for (lower-cased)."""

from __future__ import annotations

import base64
from urllib.parse import quote, quote_plus


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def wire_forms(secret: str, client_id: str | None = None) -> list[str]:
    """The forms of a secret a server may echo: exact, case-folded, URL- and form-encoded,
    base64 (of `client_id:secret` too, as HTTP Basic sends it), and a prefix."""
    forms = [
        secret,
        secret.lower(),
        secret.upper(),
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        b64(secret),
        secret[:10],
    ]
    return forms + ([b64(f"{client_id}:{secret}")] if client_id else [])


def needles(secret: str, client_id: str | None = None) -> set[str]:
    """What must not be found, lower-cased, of a secret: its wire forms, and a prefix of 8
    characters (already a secret: see `min_prefix` in bullphish_billing/clients/redaction.py)."""
    return {form.lower() for form in (*wire_forms(secret, client_id), secret[:8])}
