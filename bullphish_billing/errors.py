"""Every error of ours that ends a command, in one hierarchy; a leaf module (text.py only).

    BillingError              reported in one line, no traceback (terminal.py)
    ├── UserError             exit 2: bad input or configuration; nothing was billed
    │   ├── UsageError            a command-line argument (and BackfillRangeError)
    │   ├── ConfigurationError    a setting (settings.py)
    │   ├── WarehouseError        the warehouse cannot be opened or written (warehouse/db.py)
    │   └── UnknownPartnerError   a --partner BullPhish ID does not list
    └── RunFailure            exit 1: the run was attempted and could not go on
        ├── RunFailedError        the partner list stayed unavailable or refused
        ├── ApiError              an HTTP API failed (clients/errors.py)
        └── PublishError          the analysts' file was not replaced (publish.py)

Each module raises the errors of its concern; the command line catches the two branches.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from bullphish_billing.text import shown_list

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


class BillingError(Exception):
    """An error the command line reports in one line; `exit_code` says how it ends."""

    exit_code: int = EXIT_PROBLEMS


class UserError(BillingError):
    """The command could not start: the message says what to change. Exit 2."""

    exit_code = EXIT_USAGE


class RunFailure(BillingError):
    """The run was attempted and could not go on or finish; running it later is the remedy.
    Exit 1."""

    exit_code = EXIT_PROBLEMS


class UsageError(UserError):
    """Bad command-line input; the message is one line."""


class ConfigurationError(UserError):
    """Configuration is missing or invalid; the message is one line, safe to print."""


class WarehouseError(UserError):
    """The warehouse cannot be opened or written; the message is one line, safe to print."""


class UnknownPartnerError(UserError):
    """A partner asked for on the command line does not exist as of the date."""

    @classmethod
    def of(cls, unknown: Iterable[str], listed: int, as_of: dt.date) -> UnknownPartnerError:
        """The error for the ids in `unknown` (sorted; the first few shown, escaped)."""
        return cls(
            f"unknown partner {shown_list(sorted(unknown))} as of {as_of} "
            f"(BullPhish ID lists {listed} partners)"
        )


class RunFailedError(RunFailure):
    """The run could not go on: an API it cannot do without (the partner list) stayed
    unavailable or refused. Nothing was recorded as delivered."""
