"""The one bound on text the pipeline did not write itself (server error codes, messages and
rejection reasons, transport and exception text) wherever it is stored, logged or shown."""

from __future__ import annotations

MAX_TEXT = 300
"""The most characters of such text kept, before the `...` that marks a cut."""

MAX_READ = 4 * MAX_TEXT
"""The most characters of such text read at all (a server may send megabytes)."""


def bounded(text: str) -> str:
    """`text` on one line (each whitespace run one space), cut to MAX_TEXT characters."""
    text = " ".join(text[:MAX_READ].split())
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."
