"""Errors that end a command with exit code 2 and a one-line message, no traceback."""

from __future__ import annotations

from bullphish_billing.settings import ConfigurationError
from bullphish_billing.stages import UnknownPartnerError
from bullphish_billing.warehouse.db import WarehouseError

USER_FACING_ERRORS = (ConfigurationError, UnknownPartnerError, WarehouseError)
