"""What the terminal shows of Prefect's log while a command runs a flow in this process.

Prefect logs a failed task or flow with the exception's traceback. For the errors the command
line reports itself in one line (a configuration or input error, exit 2; an API that refused or
stayed down, exit 1) that traceback is noise before the one line that says it all, so the
terminal shows those log lines without it. Prefect's own log (the API, the UI) keeps it.
"""

from __future__ import annotations

import logging


class _WithoutTraceback(logging.Formatter):
    """Formats as `inner` does, leaving out the traceback of the exceptions in `quiet`."""

    def __init__(self, inner: logging.Formatter, quiet: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.inner, self.quiet = inner, quiet

    def format(self, record: logging.LogRecord) -> str:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, self.quiet):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text  # other handlers (the API's) keep them
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


def hide_tracebacks(quiet: tuple[type[BaseException], ...]) -> None:
    """Leave the tracebacks of `quiet` exceptions out of Prefect's console log lines."""
    import prefect.main  # noqa: F401 - sets Prefect's logging up, as any use of Prefect does
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, PrefectConsoleHandler) and not isinstance(
                handler.formatter, _WithoutTraceback
            ):
                handler.setFormatter(
                    _WithoutTraceback(handler.formatter or logging.Formatter(), quiet)
                )
