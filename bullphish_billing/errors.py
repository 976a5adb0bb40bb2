"""Errors that end a command with exit code 2 and a one-line message, no traceback."""

from __future__ import annotations

from bullphish_billing.clients import ApiError
from bullphish_billing.settings import ConfigurationError
from bullphish_billing.stages import UnknownPartnerError
from bullphish_billing.warehouse.db import WarehouseError

USER_FACING_ERRORS = (ConfigurationError, UnknownPartnerError, WarehouseError)

ONE_LINE_ERRORS = (*USER_FACING_ERRORS, ApiError)
"""Every error the command line reports in one line: USER_FACING_ERRORS (exit 2) and an API
that refused or stayed down (exit 1). Their tracebacks stay off the terminal (terminal.py)."""
