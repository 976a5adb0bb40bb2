"""Text from outside in a one-line message: user-supplied values (a partner id, a path, a
column name read from a file) shown escaped and cut to a readable length, and the text of an
exception raised by a library, on one line."""

from __future__ import annotations

from collections.abc import Iterable

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


def one_line(exc: BaseException, max_chars: int = 300) -> str:
    """An exception's text (a library's: DuckDB, the OS) on one line, cut to `max_chars`."""
    return " ".join(str(exc).split())[:max_chars]
