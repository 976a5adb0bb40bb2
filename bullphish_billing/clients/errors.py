"""One exception hierarchy for every failure of the two HTTP APIs.

Messages and attributes name the API, the method, the URL path (never the query string), the
HTTP status, the API's error code and message. They never carry tokens or client secrets: every
server-supplied or transport text passes through the clients' redactor (`redaction.py`), which
blanks known secrets in every form they take on the wire and bounds the text, before it
reaches an exception; the message as a whole is bounded too (`bullphish_billing.text`).
"""

from __future__ import annotations

from typing import Any

from bullphish_billing.errors import RunFailure
from bullphish_billing.text import bounded


class ApiError(RunFailure):
    """Base class of every failure of a BullPhish ID or KaseyaOne request."""

    def __init__(
        self,
        message: str,
        *,
        api: str,
        method: str = "",
        path: str = "",
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        self.api = api
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.message = bounded(message)  # the server text it quotes is redacted already
        super().__init__(self._one_line())

    def _one_line(self) -> str:
        status = self.status if self.status is not None else "-"
        code = self.code or "-"
        return (
            f"{self.api} {self.method} {self.path} failed: status={status} code={code}: "
            f"{self.message}"
        )

    def __str__(self) -> str:
        return self._one_line()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(api={self.api!r}, method={self.method!r}, "
            f"path={self.path!r}, status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructor arguments break the default Exception pickling, and Prefect
        # pickles task exceptions: rebuild from the instance dict instead.
        return (_rebuild, (type(self), dict(self.__dict__)))


def _rebuild(cls: type[ApiError], state: dict[str, Any]) -> ApiError:
    exc = cls.__new__(cls)
    exc.__dict__.update(state)
    Exception.__init__(exc, exc._one_line())
    return exc


class FinalApiError(ApiError):
    """A failure that repeating the request will not cure: 4xx other than 429 (and 401 after
    one token refresh), or a response that breaks the contract."""


class ContractViolationError(FinalApiError):
    """The response does not match the API contract (bad JSON, missing `data`/`next_cursor`,
    a cursor that repeats, an unexpected status, ...)."""


class LimitExceededError(ContractViolationError):
    """A response or a list went past a bound the settings set where the contract sets none
    (a body that inflates beyond any page, a list that never ends): what it would take to
    read on is not spent, and repeating the request would not help."""


class RetriesExhaustedError(ApiError):
    """Transient failures (5xx, 429, timeouts, connection errors) until the attempts or the
    per-request deadline ran out. `attempts` says how many requests were sent."""

    def __init__(
        self,
        message: str,
        *,
        api: str,
        method: str = "",
        path: str = "",
        status: int | None = None,
        code: str | None = None,
        attempts: int = 0,
    ) -> None:
        self.attempts = attempts
        super().__init__(message, api=api, method=method, path=path, status=status, code=code)


class StoppedError(ApiError):
    """The command was asked to stop (SIGTERM, Ctrl-C): the request was not sent, or not
    sent again (`bullphish_billing/stopping.py`). Not final: the next run sends it."""
