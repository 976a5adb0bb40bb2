"""Sandbox servers for the two APIs of the billing feed, with generated data and faults.

MSPs have no test environment for BullPhish ID or KaseyaOne billing; this package serves both
contracts on 127.0.0.1 from deterministic generated data (:class:`World`), with optional fault
injection. It is written from the API contracts alone and imports nothing else from
``bullphish_billing``, so it catches the pipeline's mistakes instead of sharing them.

Quick start::

    with RunningSandbox(SandboxConfig(short_pages=True, rate_5xx=0.1)) as sandbox:
        ...  # point clients at sandbox.bullphish_url and sandbox.kaseyaone_url
        sandbox.kaseyaone.stored("p_0001")  # what KaseyaOne now holds
"""

from bullphish_billing.sandbox.bullphish_api import bullphish_app
from bullphish_billing.sandbox.config import SandboxConfig
from bullphish_billing.sandbox.kaseyaone_api import (
    BILLING_TYPES,
    KaseyaOneState,
    UsageRequest,
    kaseyaone_app,
)
from bullphish_billing.sandbox.server import RunningSandbox, serve
from bullphish_billing.sandbox.world import PARTNER_ROLES, World

__all__ = [
    "BILLING_TYPES",
    "PARTNER_ROLES",
    "KaseyaOneState",
    "RunningSandbox",
    "SandboxConfig",
    "UsageRequest",
    "World",
    "bullphish_app",
    "kaseyaone_app",
    "serve",
]
