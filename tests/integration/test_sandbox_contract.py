"""Contract conformance of the sandbox servers, over real loopback HTTP.

Every exchange is checked with openapi-core against docs/contracts: the request is valid
(or, for the error paths that send an invalid request on purpose, invalid), and the response is
one the contract documents for that operation, body schema included. A few error answers the
contract does not document (400 on billing-types and organization-mappings) are listed in
UNDOCUMENTED and checked to carry the contract's Error body instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import yaml
from contracts import CONTRACTS
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from bullphish_billing.sandbox import RunningSandbox, SandboxConfig

TODAY = dt.date(2025, 11, 25)
YESTERDAY = TODAY - dt.timedelta(days=1)
BULLPHISH_TOKEN = {"Authorization": "Bearer sandbox-bullphish-token"}
CREDENTIALS = {
    "grant_type": "client_credentials",
    "client_id": "sandbox-client",
    "client_secret": "sandbox-secret",
}


class _Request:
    """An httpx request as openapi-core's Request protocol, addressed to the contract's server."""

    def __init__(self, request: httpx.Request, host_url: str) -> None:
        self.host_url = host_url
        self.path = request.url.path
        self.method = request.method.lower()
        self.body = request.content or None
        self.content_type = request.headers.get("content-type", "")
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qsl(request.url.query.decode(), keep_blank_values=True)),
            header=Headers(dict(request.headers)),
            cookie=ImmutableMultiDict(),
        )


class _Response:
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.content_type = response.headers.get("content-type", "")
        self.headers = Headers(dict(response.headers))
        self.data = response.content


class Contract:
    def __init__(self, filename: str) -> None:
        path = CONTRACTS / filename
        self.spec = OpenAPI.from_file_path(str(path))
        raw = yaml.safe_load(path.read_text())
        self.server = raw["servers"][0]["url"]
        self.error_codes = set(
            raw["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"][
                "enum"
            ]
        )

    def check(
        self, response: httpx.Response, *, request_valid: bool = True, documented: bool = True
    ) -> httpx.Response:
        request = _Request(response.request, self.server)
        errors = list(self.spec.iter_request_errors(request))
        if request_valid:
            assert not errors, f"{response.request.method} {response.request.url}: {errors}"
        else:
            assert errors, f"expected {response.request.url} to break the contract"
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
            assert body["error"]["code"] in self.error_codes
            assert isinstance(body["error"]["message"], str)
        if documented:
            self.spec.validate_response(request, _Response(response))
        else:
            with pytest.raises(Exception, match="(?i)response|status"):
                self.spec.validate_response(request, _Response(response))
        return response


@pytest.fixture(scope="module")
def bullphish_contract() -> Contract:
    return Contract("bullphish-id.openapi.yaml")


@pytest.fixture(scope="module")
def kaseyaone_contract() -> Contract:
    return Contract("kaseyaone-billing.openapi.yaml")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    with RunningSandbox(SandboxConfig(today=TODAY, short_pages=True)) as running:
        yield running


@pytest.fixture(scope="module")
def faulty() -> Iterator[RunningSandbox]:
    config = SandboxConfig(today=TODAY, rate_429=0.3, rate_5xx=0.3, rate_lost_response=0.5)
    with RunningSandbox(config) as running:
        yield running


@pytest.fixture
def bp(sandbox: RunningSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.bullphish_url, headers=BULLPHISH_TOKEN) as client:
        yield client


@pytest.fixture
def k1(sandbox: RunningSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.kaseyaone_url) as client:
        token = client.post("/oauth/token", data=CREDENTIALS).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def _walk(client: httpx.Client, contract: Contract, path: str, **params: Any) -> list[dict]:
    records: list[dict] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = contract.check(client.get(path, params=query)).json()
        records += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return records


# ---------------------------------------------------------------------- BullPhish ID
def test_bullphish_lists_conform_for_every_partner(bp, bullphish_contract, sandbox):
    world = sandbox.world
    partners = _walk(bp, bullphish_contract, "/v1/partners", limit=5)
    assert partners == world.partners(YESTERDAY)  # as_of defaults to yesterday
    day = YESTERDAY - dt.timedelta(days=10)
    assert _walk(bp, bullphish_contract, "/v1/partners", as_of=day.isoformat()) == world.partners(
        day
    )
    for partner in partners:
        pid = partner["id"]
        for as_of in (YESTERDAY, day):
            query = {"as_of": as_of.isoformat()}
            orgs = _walk(
                bp, bullphish_contract, f"/v1/partners/{pid}/organizations", limit=3, **query
            )
            targets = _walk(
                bp, bullphish_contract, f"/v1/partners/{pid}/targets", limit=50, **query
            )
            assert orgs == world.organizations(pid, as_of)
            assert targets == world.targets(pid, as_of)


@pytest.mark.parametrize(
    ("path", "params", "headers", "status", "code", "request_valid"),
    [
        ("/v1/partners", {}, {"Authorization": ""}, 401, "unauthorized", False),
        ("/v1/partners", {}, {"Authorization": "Bearer wrong"}, 401, "unauthorized", True),
        (
            "/v1/partners/p_0001/targets",
            {},
            {"Authorization": "Basic eDp5"},
            401,
            "unauthorized",
            False,
        ),
        ("/v1/partners", {"as_of": TODAY.isoformat()}, {}, 400, "as_of_in_future", True),
        (
            "/v1/partners/p_0001/organizations",
            {"as_of": "2099-01-01"},
            {},
            400,
            "as_of_in_future",
            True,
        ),
        (
            "/v1/partners",
            {"as_of": (TODAY - dt.timedelta(days=401)).isoformat()},
            {},
            410,
            "history_expired",
            True,
        ),
        ("/v1/partners/p_0001/targets", {"as_of": "2020-01-01"}, {}, 410, "history_expired", True),
        ("/v1/partners", {"as_of": "2025-02-30"}, {}, 400, "bad_request", False),
        ("/v1/partners", {"as_of": "20251101"}, {}, 400, "bad_request", False),
        ("/v1/partners", {"limit": "0"}, {}, 400, "bad_request", False),
        ("/v1/partners", {"limit": "1001"}, {}, 400, "bad_request", False),
        ("/v1/partners/p_0001/targets", {"limit": "ten"}, {}, 400, "bad_request", False),
        ("/v1/partners", {"cursor": "garbage"}, {}, 400, "invalid_cursor", True),
        ("/v1/partners/p_0001/targets", {"cursor": "e30.AAAA"}, {}, 400, "invalid_cursor", True),
        ("/v1/partners/p_9999/organizations", {}, {}, 404, "not_found", True),
        ("/v1/partners/p_9999/targets", {}, {}, 404, "not_found", True),
        ("/v1/partners/x_1/targets", {}, {}, 400, "bad_request", False),
        ("/v1/partners/p_1!/organizations", {}, {}, 400, "bad_request", False),
    ],
)
def test_bullphish_error_paths(
    bp, bullphish_contract, path, params, headers, status, code, request_valid
):
    if headers.get("Authorization") == "":  # no Authorization header at all
        response = httpx.get(f"{bp.base_url}{path}", params=params)
    else:
        response = bp.get(path, params=params, headers=headers)
    bullphish_contract.check(response, request_valid=request_valid)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_bullphish_cursor_is_bound_to_list_partner_and_date(bp, bullphish_contract):
    first = bp.get("/v1/partners/p_0002/targets", params={"limit": 5})
    cursor = first.json()["next_cursor"]
    assert cursor is not None
    elsewhere = [
        ("/v1/partners/p_0003/targets", {}),  # another partner
        ("/v1/partners/p_0002/organizations", {}),  # another list
        ("/v1/partners/p_0002/targets", {"as_of": (YESTERDAY - dt.timedelta(days=1)).isoformat()}),
        ("/v1/partners", {}),
    ]
    for path, params in elsewhere:
        response = bp.get(path, params={**params, "cursor": cursor})
        bullphish_contract.check(response)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_cursor"
    tampered = cursor[:-2] + ("AA" if not cursor.endswith("AA") else "BB")
    response = bp.get("/v1/partners/p_0002/targets", params={"cursor": tampered})
    assert response.json()["error"]["code"] == "invalid_cursor"
    # and the cursor is reusable where it belongs: the same page twice
    again = [bp.get("/v1/partners/p_0002/targets", params={"cursor": cursor}) for _ in range(2)]
    assert again[0].content == again[1].content
    bullphish_contract.check(again[0])


def test_bullphish_unknown_route_and_method_answer_the_error_body(bp):
    for response in (bp.get("/v1/nothing"), bp.post("/v1/partners")):
        assert response.status_code in (404, 405)
        assert set(response.json()["error"]) == {"code", "message"}


def test_bullphish_faults_conform(faulty, bullphish_contract):
    statuses = set()
    with httpx.Client(base_url=faulty.bullphish_url, headers=BULLPHISH_TOKEN) as client:
        for _ in range(40):
            response = bullphish_contract.check(client.get("/v1/partners/p_0001/targets"))
            statuses.add(response.status_code)
            if response.status_code == 429:
                assert response.headers["Retry-After"] in {"0", "1"}
                assert response.json()["error"]["code"] == "rate_limited"
            elif response.status_code >= 500:
                assert response.json()["error"]["code"] == "internal"
    assert 200 in statuses and 429 in statuses and statuses & {500, 502, 503}


# ---------------------------------------------------------------------- KaseyaOne: OAuth
@pytest.mark.parametrize(
    ("form", "status", "code", "request_valid"),
    [
        ({**CREDENTIALS, "client_secret": "nope"}, 401, "invalid_client", True),
        ({**CREDENTIALS, "client_id": "someone"}, 401, "invalid_client", True),
        ({**CREDENTIALS, "grant_type": "password"}, 400, "bad_request", False),
        (
            {"grant_type": "client_credentials", "client_id": "sandbox-client"},
            400,
            "bad_request",
            False,
        ),
    ],
)
def test_token_errors(sandbox, kaseyaone_contract, form, status, code, request_valid):
    response = httpx.post(f"{sandbox.kaseyaone_url}/oauth/token", data=form)
    kaseyaone_contract.check(response, request_valid=request_valid)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_token_conforms_and_rejects_a_json_body(sandbox, kaseyaone_contract):
    ok = kaseyaone_contract.check(
        httpx.post(f"{sandbox.kaseyaone_url}/oauth/token", data=CREDENTIALS)
    )
    assert ok.json()["token_type"] == "Bearer" and ok.json()["expires_in"] == 3600
    as_json = httpx.post(f"{sandbox.kaseyaone_url}/oauth/token", json=CREDENTIALS)
    kaseyaone_contract.check(as_json, request_valid=False)
    assert as_json.status_code == 400


# ---------------------------------------------------------------------- KaseyaOne: billing types
def test_billing_types_are_the_contracts_four(k1, kaseyaone_contract):
    response = kaseyaone_contract.check(
        k1.get("/v1/billing/billing-types", params={"module": "bullphish-id"})
    )
    assert response.json()["data"] == [
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
    ]
    unauthenticated = httpx.get(
        f"{k1.base_url}/v1/billing/billing-types", params={"module": "bullphish-id"}
    )
    kaseyaone_contract.check(unauthenticated, request_valid=False)
    assert unauthenticated.json()["error"]["code"] == "invalid_token"
    unknown_token = httpx.get(
        f"{k1.base_url}/v1/billing/billing-types",
        params={"module": "bullphish-id"},
        headers={"Authorization": "Bearer not-a-token"},
    )
    kaseyaone_contract.check(unknown_token)
    assert unknown_token.status_code == 401
    # UNDOCUMENTED: the contract lists no 400 here; a wrong module still gets the Error body.
    wrong = k1.get("/v1/billing/billing-types", params={"module": "other"})
    kaseyaone_contract.check(wrong, request_valid=False, documented=False)
    assert wrong.status_code == 400


# ---------------------------------------------------------------------- KaseyaOne: usage
def _batch(partner: str = "p_0002", day: dt.date = YESTERDAY, metrics: list | None = None) -> dict:
    if metrics is None:
        metrics = [
            {
                "organization_id": "o_0002o0001",
                "billing_type": "bullphish_id.phishing.per_organization",
                "units": 1,
            },
            {
                "organization_id": "o_0002o0001",
                "billing_type": "bullphish_id.training_awareness.per_organization",
                "units": 0,
            },
        ]
    return {
        "module": "bullphish-id",
        "partner_id": partner,
        "usage_date": day.isoformat(),
        "metrics": metrics,
    }


def test_usage_post_conforms_with_every_rejection_reason(k1, kaseyaone_contract, sandbox):
    per_org = "bullphish_id.phishing.per_organization"
    metrics = [
        {"organization_id": "o_0008o0001", "billing_type": per_org, "units": 1},
        {
            "organization_id": "o_0008o0001",
            "billing_type": "bullphish_id.phishing.per_seat",
            "units": 1,
        },
        {"organization_id": "o_0008o0002", "billing_type": per_org, "units": 1},  # not linked
        {"organization_id": "o_0008o0003", "billing_type": per_org, "units": 2},
        {"organization_id": "o_0008o0004", "billing_type": per_org, "units": 1},
        {"organization_id": "o_0008o0004", "billing_type": per_org, "units": 0},
        {
            "organization_id": "o_0008o0005",
            "billing_type": "bullphish_id.phishing.per_user",
            "units": 12,
        },
    ]
    response = kaseyaone_contract.check(
        k1.post(
            "/v1/billing/usage",
            json=_batch("p_0008", metrics=metrics),
            headers={"Idempotency-Key": "c-1"},
        ),
        request_valid=False,  # an unknown billing type, units 2 for a flag: Metric schema broken
    )
    assert response.json() == {
        "accepted": 2,
        "rejected": [
            {"index": 1, "reason": "unknown_billing_type"},
            {"index": 2, "reason": "organization_not_linked"},
            {"index": 3, "reason": "invalid_units"},
            {"index": 4, "reason": "duplicate_in_batch"},
            {"index": 5, "reason": "duplicate_in_batch"},
        ],
        "replayed": False,
    }
    replay = kaseyaone_contract.check(
        k1.post(
            "/v1/billing/usage",
            json=_batch("p_0008", metrics=metrics),
            headers={"Idempotency-Key": "c-1"},
        ),
        request_valid=False,
    )
    assert replay.json() == {**response.json(), "replayed": True}
    clean = kaseyaone_contract.check(
        k1.post("/v1/billing/usage", json=_batch(), headers={"Idempotency-Key": "c-2"})
    )
    assert clean.json() == {"accepted": 2, "rejected": [], "replayed": False}
    reused = kaseyaone_contract.check(
        k1.post(
            "/v1/billing/usage",
            json=_batch(metrics=_batch()["metrics"][:1]),
            headers={"Idempotency-Key": "c-2"},
        )
    )
    assert (reused.status_code, reused.json()["error"]["code"]) == (409, "idempotency_key_reused")


@pytest.mark.parametrize(
    ("body", "key", "status", "code", "request_valid"),
    [
        (_batch(), None, 400, "bad_request", False),
        (_batch(), "x" * 256, 400, "bad_request", False),
        (_batch(), "has space", 400, "bad_request", True),  # not visible ASCII
        ({**_batch(), "module": "other"}, "e-1", 400, "bad_request", False),
        (
            {k: v for k, v in _batch().items() if k != "usage_date"},
            "e-2",
            400,
            "bad_request",
            False,
        ),
        (_batch(metrics=[]), "e-3", 400, "bad_request", False),
        (
            _batch(metrics=[{"organization_id": "o_0002o0001", "units": 1}]),
            "e-4",
            400,
            "bad_request",
            False,
        ),
        (
            _batch(
                metrics=[
                    {
                        "organization_id": "o_0002o0001",
                        "billing_type": "bullphish_id.phishing.per_user",
                        "units": 1,
                    }
                ]
                * 1001
            ),
            "e-5",
            413,
            "batch_too_large",
            False,
        ),
        (_batch(day=TODAY), "e-6", 422, "usage_date_out_of_window", True),
        (_batch(day=TODAY - dt.timedelta(days=401)), "e-7", 422, "usage_date_out_of_window", True),
        (_batch(partner="p_0007"), "e-8", 422, "partner_not_linked", True),
        (_batch(partner="p_0003"), "e-9", 422, "partner_not_linked", True),
        (_batch(partner="p_9999"), "e-10", 422, "partner_not_linked", True),
        ({**_batch(), "partner_id": "0002"}, "e-11", 400, "bad_request", False),
    ],
)
def test_usage_post_refusals(
    k1, kaseyaone_contract, sandbox, body, key, status, code, request_valid
):
    before = sandbox.kaseyaone.stored()
    headers = {"Idempotency-Key": key} if key is not None else {}
    response = k1.post("/v1/billing/usage", json=body, headers=headers)
    kaseyaone_contract.check(response, request_valid=request_valid)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert sandbox.kaseyaone.stored() == before


def test_usage_post_that_is_not_json_is_refused(k1, kaseyaone_contract):
    response = k1.post(
        "/v1/billing/usage",
        content=b"{not json",
        headers={"Idempotency-Key": "nj-1", "Content-Type": "application/json"},
    )
    kaseyaone_contract.check(response, request_valid=False)
    assert response.status_code == 400


def test_usage_get_conforms_and_pages(k1, kaseyaone_contract, sandbox):
    day = YESTERDAY - dt.timedelta(days=5)
    orgs = [o["id"] for o in sandbox.world.organizations("p_0002", day)]
    metrics = [
        {"organization_id": oid, "billing_type": f"bullphish_id.{m}.per_organization", "units": 1}
        for oid in orgs
        for m in ("training_awareness", "phishing")
    ]
    k1.post(
        "/v1/billing/usage",
        json=_batch(day=day, metrics=metrics),
        headers={"Idempotency-Key": "g-1"},
    )
    got = _walk(
        k1,
        kaseyaone_contract,
        "/v1/billing/usage",
        module="bullphish-id",
        partner_id="p_0002",
        usage_date=day.isoformat(),
        limit=3,
    )
    assert got == sandbox.kaseyaone.stored("p_0002", day)
    assert len(got) == len(metrics)
    empty = kaseyaone_contract.check(
        k1.get(
            "/v1/billing/usage",
            params={
                "module": "bullphish-id",
                "partner_id": "p_0003",
                "usage_date": day.isoformat(),
            },
        )
    )
    assert empty.json() == {"data": [], "next_cursor": None}
    for params, request_valid, code in [
        ({"partner_id": "p_0002", "usage_date": day.isoformat()}, False, "bad_request"),
        ({"module": "bullphish-id", "usage_date": day.isoformat()}, False, "bad_request"),
        ({"module": "bullphish-id", "partner_id": "p_0002"}, False, "bad_request"),
        (
            {"module": "bullphish-id", "partner_id": "p_0002", "usage_date": "yesterday"},
            False,
            "bad_request",
        ),
        (
            {
                "module": "bullphish-id",
                "partner_id": "p_0002",
                "usage_date": day.isoformat(),
                "limit": 0,
            },
            False,
            "bad_request",
        ),
        (
            {
                "module": "bullphish-id",
                "partner_id": "p_0002",
                "usage_date": day.isoformat(),
                "cursor": "x",
            },
            True,
            "bad_request",
        ),  # KaseyaOne has no invalid_cursor code
    ]:
        response = kaseyaone_contract.check(
            k1.get("/v1/billing/usage", params=params), request_valid=request_valid
        )
        assert (response.status_code, response.json()["error"]["code"]) == (400, code)


# ---------------------------------------------------------------------- KaseyaOne: mappings
def test_organization_mappings_conform(k1, kaseyaone_contract, sandbox):
    mappings = _walk(
        k1,
        kaseyaone_contract,
        "/v1/partners/p_0008/organization-mappings",
        module="bullphish-id",
        limit=2,
    )
    assert mappings == sandbox.world.organization_mappings("p_0008")
    for pid in ("p_0007", "p_9999", "p_0003"):  # unlinked, unknown, not activated
        response = kaseyaone_contract.check(
            k1.get(f"/v1/partners/{pid}/organization-mappings", params={"module": "bullphish-id"})
        )
        assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")
    # UNDOCUMENTED: no 400 in the contract for this operation.
    no_module = k1.get("/v1/partners/p_0008/organization-mappings")
    kaseyaone_contract.check(no_module, request_valid=False, documented=False)
    assert no_module.status_code == 400
    bad_cursor = k1.get(
        "/v1/partners/p_0008/organization-mappings",
        params={"module": "bullphish-id", "cursor": "x"},
    )
    kaseyaone_contract.check(bad_cursor, documented=False)
    assert bad_cursor.json()["error"]["code"] == "bad_request"


def test_kaseyaone_faults_conform(faulty, kaseyaone_contract):
    statuses: set[int] = set()
    with httpx.Client(base_url=faulty.kaseyaone_url) as client:
        token = None
        for _ in range(30):
            response = kaseyaone_contract.check(client.post("/oauth/token", data=CREDENTIALS))
            statuses.add(response.status_code)
            if response.status_code == 200:
                token = response.json()["access_token"]
        assert token is not None
        client.headers["Authorization"] = f"Bearer {token}"
        for i in range(30):
            response = client.post(
                "/v1/billing/usage", json=_batch(), headers={"Idempotency-Key": f"f-{i}"}
            )
            kaseyaone_contract.check(response)
            statuses.add(response.status_code)
    assert {200, 429} <= statuses and statuses & {500, 502, 503}
