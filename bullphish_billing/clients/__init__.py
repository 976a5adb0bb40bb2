"""The HTTP contract of the two external APIs, in one place.

`BullPhishClient` reads partners, organizations and targets from BullPhish ID;
`KaseyaOneClient` reports usage to KaseyaOne and reads it back. Both retry transient failures
under one `RetryPolicy` and raise one exception hierarchy rooted at `ApiError`.
"""

from .bullphish import BullPhishClient
from .errors import (
    ApiError,
    ContractViolationError,
    FinalApiError,
    LimitExceededError,
    RetriesExhaustedError,
    StoppedError,
)
from .kaseyaone import KaseyaOneClient, UsageResult
from .pages import ListBudget, Page
from .retry import RetryPolicy

__all__ = [
    "ApiError",
    "BullPhishClient",
    "ContractViolationError",
    "FinalApiError",
    "KaseyaOneClient",
    "LimitExceededError",
    "ListBudget",
    "Page",
    "RetriesExhaustedError",
    "RetryPolicy",
    "StoppedError",
    "UsageResult",
]
