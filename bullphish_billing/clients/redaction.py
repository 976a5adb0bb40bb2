"""Redaction and bounding of the text servers and the transport hand the clients.

Every such text (error codes and messages, rejection reasons, transport error strings) passes
through a `Redactor` before it reaches an exception, a log line or the warehouse. It blanks
out each known secret in every form a secret takes on the wire, then puts the text on one line
and cuts it to `MAX_TEXT` characters (`bullphish_billing.text.bounded`, the one bound).

Forms of a secret: the exact value; URL-encoded (`quote`, with and without `/` safe) and
form-encoded (`quote_plus`, as in a token request's body); base64 (standard and URL-safe) of
any text holding the secret or one of those encodings, such as `base64(client_id:secret)` in
HTTP Basic; each matched case-insensitively; and a long-enough prefix of each (an echo cut
short).
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from bullphish_billing.text import MAX_READ, bounded

REDACTED = "**********"

_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_")


def min_prefix(length: int) -> int:
    """The shortest prefix of a secret form of `length` characters redacted on its own."""
    # 8: a server that cuts an echo short after 7 characters or fewer reveals too little to
    # guess the rest of a secret of 16 or more, and 8 characters of a secret practically never
    # occur by chance in other text. A shorter secret: half of it, so a cut reveals no more
    # than it hides, but at least 4 (fewer would blank ordinary words); a tiny one: all of it.
    return min(length, max(4, min(8, length // 2)))


@dataclass(frozen=True)
class _Form:
    text: str
    seed: str  # the lower-cased prefix that starts a match
    base64: bool  # a match widens to the whole base64 word around it


def _base64_cores(data: bytes) -> set[str]:
    """The characters of base64(x + data + y) that depend on `data` alone, for each of the
    three alignments of `data` in the encoded text, in both alphabets."""
    cores = set()
    for align in range(3):
        encoded = base64.b64encode(b"\0" * align + data).decode()
        start, end = -(-8 * align // 6), 8 * (align + len(data)) // 6
        core = encoded[start:end]
        cores |= {core, core.replace("+", "-").replace("/", "_")}
    return cores


def _forms(secret: str) -> list[_Form]:
    texts = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret)}
    cores = set().union(*(_base64_cores(t.encode()) for t in texts))
    forms = []
    for text, is_base64 in [(t, False) for t in texts] + [(c, True) for c in cores]:
        if text:
            forms.append(_Form(text, text[: min_prefix(len(text))].lower(), is_base64))
    return forms


@functools.lru_cache(maxsize=64)
def _matcher(secrets: tuple[str, ...]) -> tuple[re.Pattern[str], tuple[_Form, ...]]:
    forms = tuple({f.text.lower(): f for s in secrets for f in _forms(s)}.values())
    seeds = sorted({f.seed for f in forms}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, seeds)), re.IGNORECASE), forms


def _common(text: str, start: int, form: str) -> int:
    """How many characters of `form` occur, case-insensitively, at `text[start:]`."""
    n = 0
    for a, b in zip(text[start:], form, strict=False):
        if a.lower() != b.lower():
            break
        n += 1
    return n


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    """The span widened to the base64 word (padding included) around it."""
    while start > 0 and text[start - 1] in _BASE64_CHARS:
        start -= 1
    while end < len(text) and (text[end] in _BASE64_CHARS or text[end] == "="):
        end += 1
    return start, end


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every form of each of `secrets` blanked out, on one line and bounded."""
    text = text[:MAX_READ]  # a secret cut at this edge is a prefix: the prefix rule holds
    values = tuple(sorted({s for s in secrets if s}))
    if values:
        pattern, forms = _matcher(values)
        spans: list[tuple[int, int]] = []
        match = pattern.search(text)
        while match is not None:
            at = match.start()
            start, end = at, match.end()
            for form in forms:
                if text[at : at + len(form.seed)].lower() != form.seed:
                    continue
                form_end = at + _common(text, at, form.text)
                span = _widen(text, at, form_end) if form.base64 else (at, form_end)
                start, end = min(start, span[0]), max(end, span[1])
            while spans and start <= spans[-1][1]:  # a widened span may reach back
                start = min(start, spans.pop()[0])
            spans.append((start, end))
            match = pattern.search(text, end)
        for start, end in reversed(spans):
            text = text[:start] + REDACTED + text[end:]
    return bounded(text)


class Redactor:
    """Redacts the current value of each secret (read through its callable at every call) and
    of any `also` values (say, the credential a request carried) from a text, then bounds it."""

    def __init__(self, *secrets: Callable[[], str | None]) -> None:
        self._secrets = secrets

    def __call__(self, text: str, *also: str | None) -> str:
        current = [secret() for secret in self._secrets]
        return redact(text, [s for s in (*current, *also) if s])


def redactor(*secrets: Callable[[], str | None]) -> Redactor:
    """A Redactor of these secrets (server error messages and transport errors pass through it
    before reaching an exception or a log)."""
    return Redactor(*secrets)
