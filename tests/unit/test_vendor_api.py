"""tests/vendor_api.py: the vendors' API documents judge requests and responses, so that a
platform stand-in cannot drift into agreeing with our own client."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.vendor_api import ApiMismatch, VendorApi, documents
from tests.vendor_server import Call, VendorServer

SID_TOKEN = b"AC00000000000000000000000000000000:token"
BASIC = {"Authorization": "Basic " + base64.b64encode(SID_TOKEN).decode()}
BEARER = {"Authorization": "Bearer sbp_0123456789abcdef"}
JSON = {**BEARER, "Content-Type": "application/json"}
REF = "abcdefghijklmnopqrst"  # a Supabase project ref: 20 lower-case letters


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_every_document_is_here_and_every_schema_resolves() -> None:
    assert documents() == ["fly", "render", "stripe", "supabase", "twilio", "vercel"]
    for name in documents():
        api = VendorApi.load(name)
        operations = list(api._operations())
        assert operations, name
        for operation in operations:
            for response in operation.spec.get("responses", {}).values():
                for media in (api._deref(response).get("content") or {}).values():
                    # Every $ref of the document resolves: validating runs through them all.
                    api._schema_problem(media.get("schema") or {}, {}, write=False)


def test_twilio_secondary_token_request_and_answer() -> None:
    api = VendorApi.load("twilio")
    operation, params = api.check_request("POST", "/v1/AuthTokens/Secondary", headers=BASIC)
    assert (operation.template, params) == ("/v1/AuthTokens/Secondary", {})
    token = {
        "account_sid": "AC" + "0" * 32,
        "date_created": "2026-12-06T10:00:00Z",
        "date_updated": "2026-12-06T10:00:00Z",
        "secondary_auth_token": "a" * 32,
        "url": "https://accounts.twilio.com/v1/AuthTokens/Secondary",
    }
    api.check_response(operation, 201, body(token), "application/json")
    with pytest.raises(ApiMismatch, match="status 200 is not documented"):
        api.check_response(operation, 200, body(token), "application/json")
    with pytest.raises(ApiMismatch, match="account_sid"):
        wrong = {**token, "account_sid": "XX1"}
        api.check_response(operation, 201, body(wrong), "application/json")
    assert len(api.mismatches) == 2


def test_twilio_refuses_no_credentials_and_undocumented_methods() -> None:
    api = VendorApi.load("twilio")
    with pytest.raises(ApiMismatch, match=r"no credentials \(accountSid_authToken\)"):
        api.check_request("POST", "/v1/AuthTokens/Promote")
    with pytest.raises(ApiMismatch, match=r"GET /v1/AuthTokens/Secondary is not documented"):
        api.check_request("GET", "/v1/AuthTokens/Secondary", headers=BASIC)
    with pytest.raises(ApiMismatch, match="no documented path matches"):
        api.check_request("POST", "/v1/AuthTokens/Tertiary", headers=BASIC)
    operation, _ = api.check_request("DELETE", "/v1/AuthTokens/Secondary", headers=BASIC)
    api.check_response(operation, 204)
    assert len(api.mismatches) == 3


def test_supabase_path_parameters_and_json_bodies() -> None:
    api = VendorApi.load("supabase")
    secrets = [{"name": "JWT_SECRET", "value": "s3cr3t"}]
    operation, params = api.check_request(
        "POST", f"/v1/projects/{REF}/secrets", headers=JSON, body=body(secrets)
    )
    assert params == {"ref": REF} and operation.method == "post"
    with pytest.raises(ApiMismatch, match="path parameter 'ref'='abc'"):
        api.check_request("POST", "/v1/projects/abc/secrets", headers=JSON, body=body(secrets))
    with pytest.raises(ApiMismatch, match="request body: 'name' is a required property"):
        api.check_request(
            "POST", f"/v1/projects/{REF}/secrets", headers=JSON, body=body([{"value": "x"}])
        )
    with pytest.raises(ApiMismatch, match="the request body is required"):
        api.check_request("POST", f"/v1/projects/{REF}/secrets", headers=JSON)
    with pytest.raises(ApiMismatch, match="body of type 'text/plain'"):
        api.check_request(
            "POST",
            f"/v1/projects/{REF}/secrets",
            headers={**BEARER, "Content-Type": "text/plain"},
            body=b"JWT_SECRET=x",
        )
    with pytest.raises(ApiMismatch, match="does not parse"):
        api.check_request("POST", f"/v1/projects/{REF}/secrets", headers=JSON, body=b"[{")


def test_render_base_path_and_typed_query_parameters() -> None:
    api = VendorApi.load("render")  # servers: https://api.render.com/v1
    operation, params = api.check_request(
        "GET", "/v1/services/srv-123/env-vars", query="limit=20", headers=BEARER
    )
    assert operation.template == "/services/{serviceId}/env-vars"
    assert params == {"serviceId": "srv-123"}
    with pytest.raises(ApiMismatch, match="query parameter 'limit'='500'"):
        api.check_request("GET", "/v1/services/srv-123/env-vars", query="limit=500", headers=BEARER)
    with pytest.raises(ApiMismatch, match="query parameter 'limit'='many'"):
        api.check_request(
            "GET", "/v1/services/srv-123/env-vars", query="limit=many", headers=BEARER
        )


def test_stripe_balance_answer_is_held_to_its_schema() -> None:
    api = VendorApi.load("stripe")
    secret_key = {"Authorization": "Bearer sk_test_1"}
    operation, _ = api.check_request("GET", "/v1/balance", headers=secret_key)
    balance = {
        "object": "balance",
        "livemode": False,
        "available": [{"amount": 0, "currency": "usd", "source_types": {"card": 0}}],
        "pending": [{"amount": 0, "currency": "usd", "source_types": {"card": 0}}],
    }
    api.check_response(operation, 200, body(balance), "application/json")
    with pytest.raises(ApiMismatch, match="'pending' is a required property"):
        api.check_response(
            operation,
            200,
            body({k: v for k, v in balance.items() if k != "pending"}),
            "application/json",
        )
    with pytest.raises(ApiMismatch, match="answered 'text/html'"):
        api.check_response(operation, 200, b"<html>", "text/html")


# ------------------------------------------------------- a stand-in over real HTTP


def twilio_stand_in() -> VendorServer:
    """Twilio's secondary-token rotation as the document describes it: create, promote, delete."""
    state: dict[str, str | None] = {"primary": "token", "secondary": None}

    def token(value: str | None, url: str) -> dict[str, Any]:
        now = "2026-12-06T10:00:00Z"
        return {"account_sid": SID, "date_created": now, "date_updated": now, "url": url} | (
            {"secondary_auth_token": value} if url.endswith("Secondary") else {"auth_token": value}
        )

    def create(call: Call) -> tuple[int, Any]:
        state["secondary"] = "b" * 32
        return 201, token(state["secondary"], URL + "/v1/AuthTokens/Secondary")

    def promote(call: Call) -> tuple[int, Any]:
        state["primary"], state["secondary"] = state["secondary"], None
        return 200, token(state["primary"], URL + "/v1/AuthTokens/Promote")

    def delete(call: Call) -> tuple[int, Any]:
        state["secondary"] = None
        return 204, None

    return VendorServer(
        "twilio",
        {
            "CreateSecondaryAuthToken": create,
            "UpdateAuthTokenPromotion": promote,
            "DeleteSecondaryAuthToken": delete,
        },
    )


SID = "AC" + "0" * 32
URL = "https://accounts.twilio.com"


def send(server: VendorServer, method: str, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(server.url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            data = response.read()
            return response.status, json.loads(data) if data else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_a_stand_in_answers_what_the_document_allows_and_refuses_the_rest() -> None:
    server = twilio_stand_in()
    try:
        status, created = send(server, "POST", "/v1/AuthTokens/Secondary", BASIC)
        assert status == 201 and created["secondary_auth_token"] == "b" * 32
        assert send(server, "POST", "/v1/AuthTokens/Promote", BASIC)[0] == 200
        assert send(server, "DELETE", "/v1/AuthTokens/Secondary", BASIC) == (204, None)
        assert [c.operation_id for c in server.calls] == [
            "CreateSecondaryAuthToken",
            "UpdateAuthTokenPromotion",
            "DeleteSecondaryAuthToken",
        ]
        assert server.api.mismatches == []
        # A client that forgets its credentials is answered 400 and never reaches a handler.
        status, answer = send(server, "POST", "/v1/AuthTokens/Promote", {})
        assert status == 400 and "no credentials" in answer["message"]
        assert len(server.calls) == 3 and len(server.api.mismatches) == 1
    finally:
        server.close()


def test_a_stand_in_that_answers_wrong_is_caught() -> None:
    server = VendorServer("twilio", {"DeleteSecondaryAuthToken": lambda call: (200, {"ok": 1})})
    try:
        status, answer = send(server, "DELETE", "/v1/AuthTokens/Secondary", BASIC)
        assert status == 500 and "status 200 is not documented" in answer["message"]
        status, answer = send(server, "POST", "/v1/AuthTokens/Promote", BASIC)
        assert status == 501  # an operation this stand-in does not play
        assert len(server.api.mismatches) == 2
    finally:
        server.close()


def test_a_stand_in_sends_the_headers_its_handler_gives() -> None:
    """What a client must honour (Retry-After, X-RateLimit-Reset) reaches it."""
    server = VendorServer(
        "twilio", {"DeleteSecondaryAuthToken": lambda call: (204, None, {"Retry-After": "7"})}
    )
    try:
        request = urllib.request.Request(
            f"{server.url}/v1/AuthTokens/Secondary", method="DELETE", headers=BASIC
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 204 and response.headers["Retry-After"] == "7"
        assert server.api.mismatches == []
    finally:
        server.close()
