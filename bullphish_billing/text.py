"""Text from outside in a message, a log line or the warehouse: the one bound on text the
pipeline did not write itself (server error codes, messages and rejection reasons, transport
and exception text), and user-supplied values (a partner id, a path) shown escaped."""

from __future__ import annotations

from collections.abc import Iterable

MAX_TEXT = 300
"""The most characters of such text kept, before the `...` that marks a cut."""

MAX_READ = 4 * MAX_TEXT
"""The most characters of such text read at all (a server may send megabytes)."""


def bounded(text: str) -> str:
    """`text` on one line (each whitespace run one space), cut to MAX_TEXT characters."""
    text = " ".join(text[:MAX_READ].split())
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."


MAX_CHARS = 120
MAX_ITEMS = 5


def shown(value: object, max_chars: int = MAX_CHARS) -> str:
    """`value` for a message: as it is when it is plain text (printable, no spaces), else its
    repr, so a newline or a control character shows as an escape; longer values are cut."""
    text = str(value)
    cut = text[:max_chars]
    plain = cut.isprintable() and not any(c.isspace() for c in cut) and cut
    rendered = cut if plain else repr(cut)
    return rendered if cut == text else f"{rendered}... ({len(text):,} characters)"


def shown_list(values: Iterable[object], max_items: int = MAX_ITEMS) -> str:
    """The first `max_items` values, each `shown`, and how many more there are."""
    items = list(values)
    head = ", ".join(shown(v) for v in items[:max_items])
    more = len(items) - max_items
    return f"{head} and {more:,} more" if more > 0 else head
