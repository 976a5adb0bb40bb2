"""Fault injection: latency, 429, 5xx and lost responses, drawn per request.

Each server owns one :class:`Faults` with its own seeded generator, so faults are random per
request (a retrying client eventually succeeds, since every rate is < 1) yet the same request
sequence meets the same faults on every run.
"""

from __future__ import annotations

import asyncio
import random
import threading

from starlette.responses import Response

from bullphish_billing.sandbox._http import error_response
from bullphish_billing.sandbox.config import SandboxConfig

TRANSIENT_STATUSES = (500, 502, 503)


class Faults:
    """Decides, per request, whether to delay, refuse or break it."""

    def __init__(self, config: SandboxConfig, salt: int) -> None:
        self._config = config
        self._rng = random.Random(config.seed * 1_000_003 + salt)
        self._lock = threading.Lock()
        self.injected: dict[str, int] = {"429": 0, "5xx": 0, "lost_response": 0}
        """How many faults of each kind were served (for tests and the curious)."""

    def _draw(self) -> float:
        with self._lock:
            return self._rng.random()

    async def before(self) -> Response | None:
        """Call first in every handler: adds latency, then maybe a 429 or a 5xx answer.

        Happens before the request is looked at, so nothing is changed by a faulted request.
        """
        cfg = self._config
        if cfg.latency_ms > 0:
            await asyncio.sleep(cfg.latency_ms / 1000.0)
        if cfg.rate_429 > 0 and self._draw() < cfg.rate_429:
            self.injected["429"] += 1
            retry_after = "1" if self._draw() < 0.1 else "0"
            return error_response(
                429, "rate_limited", "sandbox: injected rate limit", {"Retry-After": retry_after}
            )
        if cfg.rate_5xx > 0 and self._draw() < cfg.rate_5xx:
            self.injected["5xx"] += 1
            return self._server_error("sandbox: injected server error")
        return None

    def lost_response(self) -> Response | None:
        """After a request's effect is stored: maybe answer 502/503 anyway (response lost)."""
        rate = self._config.rate_lost_response
        if rate > 0 and self._draw() < rate:
            self.injected["lost_response"] += 1
            return self._server_error("sandbox: injected failure after the request was stored")
        return None

    def _server_error(self, message: str) -> Response:
        with self._lock:
            status = self._rng.choice(TRANSIENT_STATUSES)
        return error_response(status, "internal", message)
