"""The KaseyaOne integrated billing API (module side) as an ASGI app, with an inspectable store.

Decisions the contract leaves open (a client must not depend on them):

* Only 200 answers of ``POST /v1/billing/usage`` are remembered for idempotency. A request
  refused as a whole (400, 401, 413, 422, an injected 429/5xx) changes nothing and leaves its
  key free, so the same key may be sent again with a corrected body.
* Idempotency keys are scoped per OAuth client (``KaseyaOneState.clients``).
* Bodies are compared as parsed JSON with sorted keys (whitespace and key order do not matter;
  ``1`` and ``1.0`` differ).
* Per-metric checks, first failing one wins: ``billing_type`` not one of the four ->
  ``unknown_billing_type``; ``organization_id`` not among the partner's linked organizations (or
  not even an ``o_`` id) -> ``organization_not_linked``; ``units`` not a JSON integer (floats
  and booleans included), negative, or not 0/1 for a ``per_organization`` type ->
  ``invalid_units``; an (organization_id, billing_type) pair appearing more than once in the
  batch -> EVERY copy is rejected ``duplicate_in_batch`` (the sandbox cannot know which value
  is meant, so it stores none).
* A metric that is not an object, lacks one of the three fields, or has a non-string
  ``organization_id``/``billing_type`` breaks the UsageBatch schema: 400 for the whole batch.
* ``module`` missing or not ``bullphish-id`` on the GET endpoints is 400 ``bad_request``, and so
  is a bad ``limit``/``cursor`` on the organization-mappings endpoint (the contract lists no 400
  there). A bad cursor is ``bad_request``: this contract has no ``invalid_cursor`` code. A
  partner KaseyaOne does not link is 404 on organization-mappings and an empty list on GET usage.
* A ``rate_lost_response`` fault stores the batch and remembers the answer, then replies with a
  5xx: a retry with the same key and body is a replay.
* ``drift_rate``: right after the first batch of a partner-date is stored, its stored metrics
  drift (dropped, other units, one metric nobody sent), seeded per metric; every drift is in
  ``KaseyaOneState.drifts``, so a test knows exactly what a reconciliation must find.
"""

from __future__ import annotations

import datetime
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bullphish_billing.sandbox._hashing import h, text_id, unit
from bullphish_billing.sandbox._http import (
    ApiError,
    Pager,
    bearer_token,
    build_app,
    error_response,
    history_window,
    json_response,
    paginate,
    parse_date,
    require_module,
    require_query,
    serialize_records,
)
from bullphish_billing.sandbox.config import SandboxConfig
from bullphish_billing.sandbox.faults import Faults
from bullphish_billing.sandbox.world import World

MODULE = "bullphish-id"
MAX_METRICS = 1000
BILLING_TYPES: tuple[dict[str, str], ...] = (
    {
        "code": "bullphish_id.training_awareness.per_organization",
        "name": "BullphishID Training Module Metric Type",
        "unit": "true_false",
    },
    {
        "code": "bullphish_id.phishing.per_organization",
        "name": "BullphishID Phishing Module Metric Type",
        "unit": "true_false",
    },
    {
        "code": "bullphish_id.training_awareness.per_user",
        "name": "BullphishID Training Module Active Users",
        "unit": "count",
    },
    {
        "code": "bullphish_id.phishing.per_user",
        "name": "BullphishID Phishing Module Active Users",
        "unit": "count",
    },
)
_UNIT_BY_CODE = {t["code"]: t["unit"] for t in BILLING_TYPES}
_PARTNER_ID = re.compile(r"^p_[A-Za-z0-9]{1,40}$")
_ORG_ID = re.compile(r"^o_[A-Za-z0-9]{1,40}$")
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass(frozen=True)
class UsageRequest:
    """One POST /v1/billing/usage as the sandbox saw it."""

    idempotency_key: str | None
    body: Any
    """The parsed JSON body (``None`` if it was not JSON)."""
    status: int
    replayed: bool
    client_id: str | None = None
    fault: str | None = None
    """``"429"``, ``"5xx"`` (refused before anything happened), ``"lost_response"`` (stored,
    then answered 5xx) or ``None``."""
    response: Any = None
    """The parsed JSON answer."""

    @property
    def stored(self) -> bool:
        """Whether this request changed the store (a fresh 200, or a lost response)."""
        return (self.status == 200 and not self.replayed) or self.fault == "lost_response"


class DriftKind:
    """What happened to a stored metric when KaseyaOne's store drifted."""

    DROPPED = "dropped"  # a reconciliation finds it missing_at_kaseyaone
    CHANGED = "changed"  # ... differs
    INJECTED = "injected"  # ... unexpected_at_kaseyaone (an organization nobody sent)


@dataclass(frozen=True)
class Drift:
    """One change KaseyaOne's store made on its own, after acknowledging (``drift_rate``)."""

    partner_id: str
    usage_date: str
    organization_id: str
    billing_type: str
    kind: str
    units_before: int | None
    units_after: int | None


_DRIFT_SALT = 0xD71F7


@dataclass
class _Token:
    client_id: str
    expires_at: float


@dataclass
class KaseyaOneState:
    """The KaseyaOne sandbox's store, shared by its app and inspectable by tests.

    Thread-safe: the server thread writes, tests read.
    """

    clients: dict[str, str] = field(default_factory=dict, repr=False)
    """OAuth clients (client_id -> secret); the app adds the config's client."""
    requests: list[UsageRequest] = field(default_factory=list, repr=False)
    """Every POST /v1/billing/usage, in arrival order."""
    # (partner, date) -> (organization, billing type) -> StoredMetric; the module is always
    # bullphish-id, the only one this sandbox accepts.
    _metrics: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = field(
        default_factory=dict, repr=False
    )
    _idempotency: dict[tuple[str, str], tuple[bytes, dict[str, Any]]] = field(
        default_factory=dict, repr=False
    )
    _tokens: dict[str, _Token] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    drifts: list[Drift] = field(default_factory=list, repr=False)
    """Every change the store made on its own (``drift_rate``), in the order made."""
    _drifted: set[tuple[str, str]] = field(default_factory=set, repr=False)

    def drift(self, partner_id: str, usage_date: datetime.date, seed: int, rate: float) -> None:
        """Once per partner-date, let its stored metrics drift (see ``DriftKind``): each one
        dropped or changed with probability ``rate``, and one metric nobody sent added with
        the same probability. Deterministic in (seed, partner, metric): the same on every date."""
        if rate <= 0:
            return
        day = usage_date.isoformat()
        scope = (partner_id, day)
        base = (seed, _DRIFT_SALT, text_id(partner_id))  # not the date: tests stay stable
        with self._lock:
            if scope in self._drifted:
                return
            self._drifted.add(scope)
            stored = self._metrics.get(scope, {})
            for pair in sorted(stored):
                metric_id = text_id("|".join(pair))
                if unit(*base, metric_id, 1) >= rate:
                    continue
                metric = stored[pair]
                before = metric["units"]
                if unit(*base, metric_id, 2) < 0.5:
                    del stored[pair]
                    self.drifts.append(
                        Drift(partner_id, day, *pair, DriftKind.DROPPED, before, None)
                    )
                    continue
                if _UNIT_BY_CODE.get(pair[1]) == "true_false":
                    after = 1 - before
                else:
                    after = before + 1 + h(*base, metric_id, 3) % 5
                metric["units"] = after
                self.drifts.append(Drift(partner_id, day, *pair, DriftKind.CHANGED, before, after))
            if stored and unit(*base, 4) < rate:
                organization_id = f"o_drift{h(*base, 5) % 10**8:08d}"
                billing_type = sorted(stored)[0][1]
                units = 1 if _UNIT_BY_CODE[billing_type] == "true_false" else 3
                stored[(organization_id, billing_type)] = {
                    "partner_id": partner_id,
                    "organization_id": organization_id,
                    "usage_date": day,
                    "billing_type": billing_type,
                    "units": units,
                    "received_at": next(iter(stored.values()))["received_at"],
                }
                self.drifts.append(
                    Drift(
                        partner_id,
                        day,
                        organization_id,
                        billing_type,
                        DriftKind.INJECTED,
                        None,
                        units,
                    )
                )

    def stored(
        self, partner_id: str | None = None, usage_date: datetime.date | None = None
    ) -> list[dict[str, Any]]:
        """StoredMetric dicts, ordered by partner, date, organization and billing type."""
        day = usage_date.isoformat() if usage_date is not None else None
        with self._lock:
            scopes = sorted(
                s for s in self._metrics
                if (partner_id is None or s[0] == partner_id) and (day is None or s[1] == day)
            )  # fmt: skip
            return [dict(self._metrics[s][k]) for s in scopes for k in sorted(self._metrics[s])]

    def sends(self) -> list[UsageRequest]:
        """The POSTs that changed the store (fresh 200s and lost responses)."""
        with self._lock:
            return [r for r in self.requests if r.stored]

    def issue_token(self, client_id: str, lifetime_s: int) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            now = time.monotonic()
            for stale in [t for t, v in self._tokens.items() if v.expires_at <= now]:
                del self._tokens[stale]
            self._tokens[token] = _Token(client_id, now + lifetime_s)
        return token

    def client_for(self, token: str | None) -> str | None:
        """The client id of a valid, unexpired token, else None."""
        if token is None:
            return None
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None or entry.expires_at <= time.monotonic():
                return None
            return entry.client_id

    def log(self, entry: UsageRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def remembered(self, client_id: str, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """(canonical body, first UsageResult) of an Idempotency-Key already answered 200."""
        with self._lock:
            return self._idempotency.get((client_id, key))

    def remember(self, client_id: str, key: str, canonical: bytes, result: dict[str, Any]) -> None:
        with self._lock:
            self._idempotency[(client_id, key)] = (canonical, result)

    def upsert(
        self, partner_id: str, usage_date: datetime.date, metrics: list[dict[str, Any]]
    ) -> None:
        """Store metrics under the key (module, partner, organization, date, billing type)."""
        received_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        received_at = received_at.replace("+00:00", "Z")
        day = usage_date.isoformat()
        with self._lock:
            stored = self._metrics.setdefault((partner_id, day), {})
            for metric in metrics:
                stored[(metric["organization_id"], metric["billing_type"])] = {
                    "partner_id": partner_id,
                    "organization_id": metric["organization_id"],
                    "usage_date": day,
                    "billing_type": metric["billing_type"],
                    "units": metric["units"],
                    "received_at": received_at,
                }


class _KaseyaOneApi:
    def __init__(self, world: World, config: SandboxConfig, state: KaseyaOneState) -> None:
        self.world = world
        self.config = config
        self.state = state
        state.clients.setdefault(config.kaseyaone_client_id, config.kaseyaone_client_secret)
        self.faults = Faults(config, salt=2)
        # The KaseyaOne contract has no invalid_cursor code: a bad cursor is a bad_request.
        self.pager = Pager(config.seed, "kaseyaone-cursor", config.short_pages, "bad_request")

    async def _guard(self, request: Request) -> tuple[Response | None, str | None]:
        """(refusal, client id): injected fault or 401, else the authenticated client."""
        fault = await self.faults.before()
        if fault is not None:
            return fault, None
        client_id = self.state.client_for(bearer_token(request))
        if client_id is None:
            return (
                error_response(
                    401,
                    "invalid_token",
                    "missing, unknown or expired access token",
                    {"WWW-Authenticate": 'Bearer error="invalid_token"'},
                ),
                None,
            )
        return None, client_id

    # ------------------------------------------------------------------ OAuth
    async def token(self, request: Request) -> Response:
        fault = await self.faults.before()
        if fault is not None:
            return fault
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/x-www-form-urlencoded"):
            raise ApiError(400, "bad_request", "expected an application/x-www-form-urlencoded body")
        try:
            form = parse_qs((await request.body()).decode(), strict_parsing=False)
        except UnicodeDecodeError:
            raise ApiError(400, "bad_request", "the form is not UTF-8") from None
        fields = {}
        for name in ("grant_type", "client_id", "client_secret"):
            values = form.get(name)
            if not values or len(values) != 1 or values[0] == "":
                raise ApiError(400, "bad_request", f"form field {name} is required (once)")
            fields[name] = values[0]
        if fields["grant_type"] != "client_credentials":
            raise ApiError(400, "bad_request", "grant_type must be client_credentials")
        secret = self.state.clients.get(fields["client_id"])
        if secret is None or not hmac.compare_digest(
            secret.encode(), fields["client_secret"].encode()
        ):
            raise ApiError(401, "invalid_client", "unknown client or wrong secret")
        lifetime = self.config.token_lifetime_s
        token = self.state.issue_token(fields["client_id"], lifetime)
        return json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": lifetime},
            headers={"Cache-Control": "no-store"},
        )

    # ------------------------------------------------------------------ billing types
    async def billing_types(self, request: Request) -> Response:
        refused, _ = await self._guard(request)
        if refused is not None:
            return refused
        require_module(request)
        return json_response({"data": list(BILLING_TYPES)})

    # ------------------------------------------------------------------ usage: POST
    async def post_usage(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = orjson.loads(raw)
            parsed = True
        except orjson.JSONDecodeError:
            body, parsed = None, False
        key = request.headers.get("idempotency-key")

        refused, client_id = await self._guard(request)
        if refused is not None:
            fault = None
            if refused.status_code == 429:
                fault = "429"
            elif refused.status_code >= 500:
                fault = "5xx"
            return self._logged(refused, key, body, client_id, fault=fault)
        assert client_id is not None
        try:
            if key is None or not _IDEMPOTENCY_KEY.match(key):
                raise ApiError(400, "bad_request", "Idempotency-Key must be 1..255 visible ASCII")
            if not parsed:
                raise ApiError(400, "bad_request", "the body is not JSON")
            canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
            remembered = self.state.remembered(client_id, key)
            if remembered is not None:
                first_body, first_result = remembered
                if first_body != canonical:
                    raise ApiError(
                        409,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used with another body",
                    )
                replay = json_response({**first_result, "replayed": True})
                return self._logged(replay, key, body, client_id, replayed=True)
            result = self._store_batch(body)
        except ApiError as exc:
            answer = error_response(exc.status, exc.code, exc.message)
            return self._logged(answer, key, body, client_id)
        self.state.remember(client_id, key, canonical, result)
        lost = self.faults.lost_response()
        if lost is not None:
            return self._logged(lost, key, body, client_id, fault="lost_response")
        return self._logged(json_response(result), key, body, client_id)

    def _logged(
        self,
        response: Response,
        key: str | None,
        body: Any,
        client_id: str | None,
        *,
        replayed: bool = False,
        fault: str | None = None,
    ) -> Response:
        self.state.log(
            UsageRequest(
                idempotency_key=key,
                body=body,
                status=response.status_code,
                replayed=replayed,
                client_id=client_id,
                fault=fault,
                response=orjson.loads(response.body),
            )
        )
        return response

    def _store_batch(self, body: Any) -> dict[str, Any]:
        """Validate a UsageBatch, upsert its good metrics, and return the UsageResult."""
        metrics = _validate_batch(body)
        usage_date = parse_date(body["usage_date"], "usage_date")
        oldest, newest = history_window(self.world.today)
        if not oldest <= usage_date <= newest:
            raise ApiError(
                422,
                "usage_date_out_of_window",
                f"usage_date must lie in {oldest.isoformat()}..{newest.isoformat()}",
            )
        partner_id = body["partner_id"]
        if not self.world.is_partner_linked(partner_id):
            raise ApiError(
                422, "partner_not_linked", f"partner {partner_id} is not linked to KaseyaOne"
            )
        linked = self.world.linked_organization_ids(partner_id)

        pairs: dict[tuple[str, str], int] = {}
        for metric in metrics:
            pair = (metric["organization_id"], metric["billing_type"])
            pairs[pair] = pairs.get(pair, 0) + 1
        rejected: list[dict[str, Any]] = []
        good: list[dict[str, Any]] = []
        for index, metric in enumerate(metrics):
            reason = _metric_problem(metric, linked, pairs)
            if reason is None:
                good.append(metric)
            else:
                rejected.append({"index": index, "reason": reason})

        self.state.upsert(partner_id, usage_date, good)
        if good:  # acknowledged: from now on the store may drift (a sandbox knob)
            self.state.drift(partner_id, usage_date, self.config.seed, self.config.drift_rate)
        return {"accepted": len(good), "rejected": rejected, "replayed": False}

    # ------------------------------------------------------------------ usage: GET
    async def list_usage(self, request: Request) -> Response:
        refused, _ = await self._guard(request)
        if refused is not None:
            return refused
        require_module(request)
        partner_id = require_query(request, "partner_id")
        usage_date = parse_date(require_query(request, "usage_date"), "usage_date")
        return paginate(
            request,
            self.pager,
            "usage",
            f"{partner_id}|{usage_date.isoformat()}",
            lambda: serialize_records(self.state.stored(partner_id, usage_date)),
        )

    # ------------------------------------------------------------------ mappings
    async def organization_mappings(self, request: Request) -> Response:
        refused, _ = await self._guard(request)
        if refused is not None:
            return refused
        partner_id = request.path_params["partner_id"]
        require_module(request)
        if not self.world.is_partner_linked(partner_id):
            raise ApiError(404, "not_found", f"partner {partner_id} is not known to KaseyaOne")
        return paginate(
            request,
            self.pager,
            "organization-mappings",
            partner_id,
            lambda: serialize_records(self.world.organization_mappings(partner_id)),
        )


def _validate_batch(body: Any) -> list[dict[str, Any]]:
    """The batch's metrics, or ApiError 400/413 when the UsageBatch schema is broken."""

    def bad(message: str) -> ApiError:
        return ApiError(400, "bad_request", message)

    if not isinstance(body, dict):
        raise bad("the body must be a UsageBatch object")
    for name in ("module", "partner_id", "usage_date", "metrics"):
        if name not in body:
            raise bad(f"{name} is required")
    if body["module"] != MODULE:
        raise bad(f"module must be {MODULE}")
    if not isinstance(body["partner_id"], str) or not _PARTNER_ID.match(body["partner_id"]):
        raise bad("partner_id must match ^p_[A-Za-z0-9]{1,40}$")
    if not isinstance(body["usage_date"], str):
        raise bad("usage_date must be a date string")
    parse_date(body["usage_date"], "usage_date")
    metrics = body["metrics"]
    if not isinstance(metrics, list):
        raise bad("metrics must be an array")
    if len(metrics) > MAX_METRICS:
        raise ApiError(413, "batch_too_large", f"a batch holds at most {MAX_METRICS} metrics")
    if not metrics:
        raise bad("a batch holds at least one metric")
    for index, metric in enumerate(metrics):
        if not isinstance(metric, dict):
            raise bad(f"metrics[{index}] must be an object")
        for name in ("organization_id", "billing_type", "units"):
            if name not in metric:
                raise bad(f"metrics[{index}].{name} is required")
        if not isinstance(metric["organization_id"], str) or not isinstance(
            metric["billing_type"], str
        ):
            raise bad(f"metrics[{index}]: organization_id and billing_type must be strings")
    return metrics


def _metric_problem(
    metric: dict[str, Any], linked: set[str], pairs: dict[tuple[str, str], int]
) -> str | None:
    unit = _UNIT_BY_CODE.get(metric["billing_type"])
    if unit is None:
        return "unknown_billing_type"
    if not _ORG_ID.match(metric["organization_id"]) or metric["organization_id"] not in linked:
        return "organization_not_linked"
    units = metric["units"]
    if type(units) is not int or units < 0 or (unit == "true_false" and units > 1):
        return "invalid_units"
    if pairs[(metric["organization_id"], metric["billing_type"])] > 1:
        return "duplicate_in_batch"
    return None


def kaseyaone_app(
    world: World, config: SandboxConfig, state: KaseyaOneState | None = None
) -> Starlette:
    """The KaseyaOne sandbox app; ``app.state.kaseyaone`` is its :class:`KaseyaOneState` and
    ``app.state.faults`` its fault counters."""
    api = _KaseyaOneApi(world, config, state if state is not None else KaseyaOneState())
    app = build_app(
        [
            Route("/oauth/token", api.token, methods=["POST"]),
            Route("/v1/billing/billing-types", api.billing_types, methods=["GET"]),
            Route("/v1/billing/usage", api.post_usage, methods=["POST"]),
            Route("/v1/billing/usage", api.list_usage, methods=["GET"]),
            Route(
                "/v1/partners/{partner_id}/organization-mappings",
                api.organization_mappings,
                methods=["GET"],
            ),
        ]
    )
    app.state.kaseyaone = api.state
    app.state.faults = api.faults
    return app
