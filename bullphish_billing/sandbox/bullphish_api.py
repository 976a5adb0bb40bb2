"""The BullPhish ID partner API (billing subset) as an ASGI app, served from a :class:`World`.

Each request does work proportional to its page only: a (list, partner, as_of) is generated
once, serialized with orjson into one blob per list kept in a byte-bounded LRU, and a page is
one slice of that blob. Checks run in this order: injected faults, bearer token, path
partner id, ``as_of``, ``limit``, unknown partner, cursor.
"""

from __future__ import annotations

import datetime
import hmac
import re

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bullphish_billing.sandbox._http import (
    ApiError,
    BytesLRU,
    Pager,
    SerializedList,
    bearer_token,
    build_app,
    error_response,
    history_window,
    paginate,
    parse_date,
    serialize_records,
)
from bullphish_billing.sandbox.config import PARTNER_ERROR_CODES, SandboxConfig
from bullphish_billing.sandbox.faults import Faults
from bullphish_billing.sandbox.world import World

_PARTNER_ID = re.compile(r"^p_[A-Za-z0-9]{1,40}$")


class _BullPhishApi:
    def __init__(self, world: World, config: SandboxConfig) -> None:
        self.world = world
        self.config = config
        self.faults = Faults(config, salt=1)
        self.pager = Pager(config.seed, "bullphish-cursor", config.short_pages)
        self.cache = BytesLRU(config.cache_mb * 1024 * 1024)
        self.partner_errors = dict(config.partner_errors)

    async def _guard(self, request: Request) -> Response | None:
        fault = await self.faults.before()
        if fault is not None:
            return fault
        token = bearer_token(request)
        if token is None or not hmac.compare_digest(
            token.encode(), self.config.bullphish_token.encode()
        ):
            return error_response(401, "unauthorized", "missing or invalid bearer token")
        return None

    def _as_of(self, request: Request) -> datetime.date:
        oldest, newest = history_window(self.world.today)
        raw = request.query_params.get("as_of")
        if raw is None:
            return newest
        as_of = parse_date(raw, "as_of")
        if as_of > newest:
            raise ApiError(400, "as_of_in_future", f"as_of must not be after {newest.isoformat()}")
        if as_of < oldest:
            raise ApiError(410, "history_expired", f"history is kept from {oldest.isoformat()} on")
        return as_of

    def _partner(self, request: Request) -> str:
        partner_id = request.path_params["partner_id"]
        if not _PARTNER_ID.match(partner_id):
            raise ApiError(400, "bad_request", "partner_id does not match ^p_[A-Za-z0-9]{1,40}$")
        return partner_id

    async def list_partners(self, request: Request) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        as_of = self._as_of(request)
        key = ("partners", "", as_of)
        return paginate(
            request,
            self.pager,
            "partners",
            f"|{as_of.isoformat()}",
            lambda: self.cache.get(key, lambda: serialize_records(self.world.partners(as_of))),
        )

    async def list_organizations(self, request: Request) -> Response:
        return await self._partner_list(request, "organizations")

    async def list_targets(self, request: Request) -> Response:
        return await self._partner_list(request, "targets")

    async def _partner_list(self, request: Request, endpoint: str) -> Response:
        if (refused := await self._guard(request)) is not None:
            return refused
        partner_id = self._partner(request)
        if (status := self.partner_errors.get(partner_id)) is not None:
            code = PARTNER_ERROR_CODES[status]
            return error_response(status, code, f"sandbox: injected {code} for {partner_id}")
        as_of = self._as_of(request)
        if not self.world.has_partner(partner_id):
            raise ApiError(404, "not_found", f"unknown partner {partner_id}")
        key = (endpoint, partner_id, as_of)

        def generate() -> SerializedList:
            if endpoint == "targets":  # the bulk of the data: straight to JSON
                return SerializedList(self.world.target_json(partner_id, as_of))
            return serialize_records(self.world.organizations(partner_id, as_of))

        return paginate(
            request,
            self.pager,
            endpoint,
            f"{partner_id}|{as_of.isoformat()}",
            lambda: self.cache.get(key, generate),
        )


def bullphish_app(world: World, config: SandboxConfig) -> Starlette:
    """The BullPhish ID sandbox app (``GET /v1/partners``, ``.../organizations``, ``.../targets``).

    ``app.state.faults`` exposes the :class:`~bullphish_billing.sandbox.faults.Faults` counters.
    """
    api = _BullPhishApi(world, config)
    app = build_app(
        [
            Route("/v1/partners", api.list_partners, methods=["GET"]),
            Route(
                "/v1/partners/{partner_id}/organizations", api.list_organizations, methods=["GET"]
            ),
            Route("/v1/partners/{partner_id}/targets", api.list_targets, methods=["GET"]),
        ]
    )
    app.state.faults = api.faults
    return app
