"""module_utils/opsbook_rest.py against a local HTTP server that answers from a script: auth
headers and bodies as sent, the retry schedule (Retry-After in seconds and as a date,
X-RateLimit-Reset, 5xx backoff, the deadline), what is and is not retried, timeouts, errors
that name the call and never a credential, redirects and foreign next-page URLs refused,
pagination."""

from __future__ import annotations

import base64
import email.utils
import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from tests.loaders import PROJECT_ROOT, load_library, load_module_utils, load_plugin

rest = load_module_utils("opsbook_rest")
RestClient, RestError = rest.RestClient, rest.RestError

CANARY = "canary-5f1e0c9d2b7a4e38"  # a token that must never be seen
WALL = 1_800_000_000.0


@dataclass
class Answer:
    status: int = 200
    body: Any = None  # dict/list: JSON; bytes: as is
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class ScriptServer:
    """Answers each request with the next Answer (or what a callable makes of the request)."""

    def __init__(self, *answers: Answer | Callable[[Seen], Answer]) -> None:
        self.answers = list(answers)
        self.seen: list[Seen] = []
        script = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                seen = Seen(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    dict(self.headers.items()),
                    self.rfile.read(length) if length else b"",
                )
                script.seen.append(seen)
                answer = script.answers.pop(0) if script.answers else Answer(500, b"no answer")
                if callable(answer):
                    answer = answer(seen)
                time.sleep(answer.delay_s)
                data = answer.body
                if isinstance(data, (dict, list)):
                    data = json.dumps(data).encode()
                data = data or b""
                with_json = isinstance(answer.body, (dict, list))
                self.send_response(answer.status)
                for name, value in {
                    **({"Content-Type": "application/json"} if with_json else {}),
                    **answer.headers,
                }.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with_body = self.command != "HEAD"
                if with_body:
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeTime:
    """A monotonic clock, a wall clock and a sleep that only move when slept."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    def now(self) -> float:
        return WALL + self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.t += seconds


@pytest.fixture
def script() -> Iterator[Callable[..., ScriptServer]]:
    servers: list[ScriptServer] = []

    def start(*answers: Answer | Callable[[Seen], Answer]) -> ScriptServer:
        servers.append(ScriptServer(*answers))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def client(url: str, fake: FakeTime | None = None, **kw: Any) -> Any:
    fake = fake or FakeTime()
    return RestClient(url, clock=fake.clock, now=fake.now, sleep=fake.sleep, **kw)


def no_secret_in(*texts: str) -> None:
    for text in texts:
        assert CANARY not in text
        assert base64.b64encode(f"AC1:{CANARY}".encode()).decode() not in text


# ------------------------------------------------------------------ requests as sent


def test_basic_auth_json_and_form_bodies_query_and_base_path(script: Callable) -> None:
    server = script(Answer(201, {"ok": 1}), Answer(200, {"ok": 2}), Answer(204))
    api = client(server.url + "/v1/", basic=("AC1", CANARY))
    created = api.post("/services/srv-1/env-vars", json={"value": "x"}, query={"limit": 20})
    assert created.status == 201 and created.json() == {"ok": 1} and created.attempts == 1
    api.post("AuthTokens", form={"FriendlyName": "a b", "Ttl": 5, "Gone": None})
    assert api.delete("/x", query={"dry": True, "tag": ["a", "b"]}).json() is None
    first, second, third = server.seen
    assert (first.method, first.path, first.query) == (
        "POST",
        "/v1/services/srv-1/env-vars",
        {"limit": ["20"]},
    )
    expected = "Basic " + base64.b64encode(f"AC1:{CANARY}".encode()).decode()
    assert first.headers["Authorization"] == expected
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["Accept"] == "application/json"
    assert json.loads(first.body) == {"value": "x"}
    assert second.path == "/v1/AuthTokens"
    assert second.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(second.body.decode()) == {"FriendlyName": ["a b"], "Ttl": ["5"]}
    assert third.query == {"dry": ["true"], "tag": ["a", "b"]} and third.body == b""
    assert api.history == [
        "POST /v1/services/srv-1/env-vars 201",
        "POST /v1/AuthTokens 200",
        "DELETE /v1/x 204",
    ]


def test_bearer_token_and_one_kind_of_credentials(script: Callable) -> None:
    server = script(Answer(200, {}))
    client(server.url, token=CANARY).get("/v1/balance")
    assert server.seen[0].headers["Authorization"] == f"Bearer {CANARY}"
    with pytest.raises(ValueError, match="not both"):
        RestClient(server.url, basic=("u", "p"), token="t")
    with pytest.raises(ValueError, match="http:// or https://"):
        RestClient("ftp://example.com")


# ------------------------------------------------------------------ the retry schedule


def test_retry_after_in_seconds_is_honoured(script: Callable) -> None:
    server = script(Answer(429, {"message": "slow down"}, {"Retry-After": "7"}), Answer(200, {}))
    fake = FakeTime()
    response = client(server.url, fake, token="t").get("/v1/balance")
    assert response.status == 200 and response.attempts == 2
    assert fake.sleeps == [7.0] and response.elapsed_s == 7.0


def test_retry_after_as_an_http_date_is_honoured(script: Callable) -> None:
    fake = FakeTime()
    when = email.utils.formatdate(fake.now() + 12, usegmt=True)
    server = script(Answer(503, {}, {"Retry-After": when}), Answer(200, {}))
    assert client(server.url, fake).get("/v1/x").status == 200
    assert fake.sleeps == [12.0]


def test_x_ratelimit_reset_epoch_seconds_is_honoured(script: Callable) -> None:
    fake = FakeTime()
    server = script(
        Answer(429, {"error": {"code": "rate_limited"}}, {"X-RateLimit-Reset": str(int(WALL) + 5)}),
        Answer(429, {}, {"X-RateLimit-Reset": "3"}),  # a small number: seconds from now
        Answer(200, {}),
    )
    assert client(server.url, fake).get("/v9/projects").attempts == 3
    assert fake.sleeps == [5.0, 3.0]


def test_5xx_is_retried_with_exponential_backoff_then_succeeds(script: Callable) -> None:
    fake = FakeTime()
    server = script(Answer(500), Answer(502), Answer(503), Answer(200, {"done": True}))
    response = client(server.url, fake, backoff_s=1.0).put("/v1/env/KEY", json={"value": "v"})
    assert response.json() == {"done": True} and response.attempts == 4
    assert fake.sleeps == [1.0, 2.0, 4.0]
    assert len(server.seen) == 4


def test_post_is_retried_on_429_always_on_5xx_only_when_safe(script: Callable) -> None:
    fake = FakeTime()
    server = script(Answer(429), Answer(500, {"message": "boom"}))
    api = client(server.url, fake)
    with pytest.raises(RestError) as caught:
        api.post("/v1/AuthTokens/Secondary")
    assert caught.value.status == 500 and caught.value.attempts == 2  # 429 retried, 500 not
    server.answers = [Answer(500), Answer(201, {})]
    assert api.post("/v1/AuthTokens/Secondary", retry_unsafe=True).attempts == 2
    server.answers = [Answer(400, {"message": "bad"})]
    with pytest.raises(RestError, match="HTTP 400 Bad Request: bad; 1 attempt"):
        api.get("/v1/x")  # a 4xx other than 429 is never retried


def test_gives_up_when_the_asked_wait_passes_the_deadline(script: Callable) -> None:
    fake = FakeTime()
    server = script(Answer(503, {"message": "maintenance"}, {"Retry-After": "30"}))
    with pytest.raises(RestError) as caught:
        client(server.url, fake, deadline_s=20).get("/v1/balance")
    assert str(caught.value) == (
        "GET /v1/balance: HTTP 503 Service Unavailable: maintenance; 1 attempt in 0.0 s; "
        "gave up: the vendor asked to wait 30.0 s, past the deadline of 20 s (0.0 s spent)"
    )
    assert fake.sleeps == [] and len(server.seen) == 1


def test_gives_up_after_the_deadline_naming_the_call_and_attempts(script: Callable) -> None:
    fake = FakeTime()
    server = script(*[Answer(502, {"error": "bad gateway"})] * 10)
    with pytest.raises(RestError) as caught:
        client(server.url, fake, deadline_s=10, backoff_s=1).delete("/v1/apps/a/secrets/K")
    error = caught.value
    assert fake.sleeps == [1.0, 2.0, 4.0]  # the next wait (8 s) would end at 15 s > 10 s
    assert (error.call, error.status, error.attempts) == ("DELETE /v1/apps/a/secrets/K", 502, 4)
    assert str(error).startswith(
        "DELETE /v1/apps/a/secrets/K: HTTP 502 Bad Gateway: bad gateway; 4 attempts in 7.0 s"
    )
    assert "the next wait is 8.0 s, past the deadline of 10 s" in str(error)


def test_max_attempts_bounds_the_retries(script: Callable) -> None:
    fake = FakeTime()
    server = script(*[Answer(503)] * 5)
    with pytest.raises(RestError, match=r"3 attempts in 3\.0 s; gave up: 3 attempts made"):
        client(server.url, fake, max_attempts=3, backoff_s=1).get("/v1/x")
    assert len(server.seen) == 3


def test_a_timeout_names_the_call_and_is_retried_only_when_safe(script: Callable) -> None:
    server = script(*[Answer(200, {}, delay_s=0.4)] * 3)
    fake = FakeTime()
    api = RestClient(server.url, timeout_s=0.1, max_attempts=2, sleep=fake.sleep)
    with pytest.raises(RestError) as caught:
        api.post("/v1/AuthTokens/Promote")
    assert caught.value.status is None and caught.value.attempts == 1
    assert str(caught.value).startswith("POST /v1/AuthTokens/Promote: timed out after 0.1 s;")
    with pytest.raises(RestError, match=r"GET /v1/x: timed out after 0.1 s; 2 attempts"):
        api.get("/v1/x")
    assert fake.sleeps == [1.0]


def test_a_refused_connection_is_retried_even_for_post() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens
    fake = FakeTime()
    with pytest.raises(RestError) as caught:
        client(f"http://127.0.0.1:{port}", fake, max_attempts=3).post("/v1/x")
    assert caught.value.attempts == 3 and "connection refused" in str(caught.value)
    assert fake.sleeps == [1.0, 2.0]


# ------------------------------------------------------------------ errors and secrets


def test_a_401_gives_the_vendors_message_and_code(script: Callable) -> None:
    twilio = {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    server = script(Answer(401, twilio))
    with pytest.raises(RestError) as caught:
        client(server.url, basic=("AC1", CANARY)).post("/v1/AuthTokens/Secondary")
    error = caught.value
    assert str(error) == (
        "POST /v1/AuthTokens/Secondary: HTTP 401 Unauthorized: Authenticate (code 20003); "
        "1 attempt in 0.0 s"
    )
    assert (error.status, error.vendor_code, error.body) == (401, 20003, twilio)


def test_no_credential_in_any_message(script: Callable) -> None:
    """The vendor echoes the token, the password and the Authorization header; a secret query
    value goes in the URL: none of them reaches a message, the history or the call's name."""
    echoed = f"token {CANARY}, header Basic {base64.b64encode(f'AC1:{CANARY}'.encode()).decode()}"
    server = script(
        Answer(403, {"error": {"message": echoed, "type": "invalid_request_error"}}),
        Answer(500, f"<html>{CANARY}</html>".encode(), {"Content-Type": "text/plain"}),
        Answer(302, b"", {"Location": f"https://elsewhere.example/?t={CANARY}"}),
    )
    api = client(server.url, basic=("AC1", CANARY))
    messages = []
    for call in (
        lambda: api.get("/v1/balance"),
        lambda: api.post("/v1/x"),
        lambda: api.get("/v1/y", query={"api_key": CANARY, "page": 2}, secret_query={"api_key"}),
    ):
        with pytest.raises(RestError) as caught:
            call()
        messages += [str(caught.value), repr(caught.value), caught.value.call]
    assert "********" in messages[0] and "invalid_request_error" in messages[0]
    assert "a redirect, not followed" in messages[-3]
    assert messages[-1] == "GET /v1/y"
    no_secret_in(*messages, *api.history)
    assert server.seen[2].query["api_key"] == [CANARY]  # sent, never shown


def test_credentials_never_go_to_another_host(script: Callable) -> None:
    server = script()
    api = client(server.url, token=CANARY)
    with pytest.raises(RestError, match="credentials are only sent to the configured API"):
        api.get("https://evil.example/v1/balance")
    assert server.seen == []


def test_accepted_statuses_come_back_as_answers(script: Callable) -> None:
    server = script(Answer(404, {"code": 20404, "message": "not found"}))
    response = client(server.url).delete("/v1/AuthTokens/Secondary", accept=(404,))
    assert response.status == 404 and response.json()["code"] == 20404


def test_vendor_message_shapes() -> None:
    message = rest.vendor_message
    assert message({"error": {"message": "No such key", "type": "invalid_request_error"}}) == (
        "No such key",
        "invalid_request_error",
    )  # Stripe
    assert message({"error": {"code": "forbidden", "message": "Not authorized"}}) == (
        "Not authorized",
        "forbidden",
    )  # Vercel
    assert message({"error": "machine not found", "status": "unknown"}) == (
        "machine not found",
        "unknown",
    )  # Fly
    assert message({"id": "x", "message": "not found"}) == ("not found", None)  # Render
    assert message({"errors": [{"message": "a"}, {"message": "b"}]}) == ("a; b", None)
    assert message(["x"]) == ("", None) and message({}) == ("", None)


def test_retry_wait_reads_what_the_vendor_said() -> None:
    wait = rest.retry_wait
    assert wait({"retry-after": "2.5"}, WALL) == 2.5
    assert wait({"retry-after": "-3"}, WALL) == 0.0
    assert wait({"retry-after": email.utils.formatdate(WALL - 60, usegmt=True)}, WALL) == 0.0
    assert wait({"retry-after": "soon"}, WALL) is None
    assert wait({"x-ratelimit-reset": str(int(WALL) + 9)}, WALL) == 9.0
    assert wait({}, WALL) is None


# ------------------------------------------------------------------ pagination


def test_paginate_follows_cursors_and_next_urls(script: Callable) -> None:
    server = script(
        Answer(
            200,
            [{"cursor": "c1", "envVar": {"key": "A"}}, {"cursor": "c2", "envVar": {"key": "B"}}],
        ),
        Answer(200, [{"cursor": "c3", "envVar": {"key": "C"}}]),
    )
    api = client(server.url + "/v1", token="t")

    def render_next(response: Any) -> dict[str, str] | None:
        page = response.json()
        return {"cursor": page[-1]["cursor"]} if len(page) == 2 else None

    keys = [
        item["envVar"]["key"]
        for item in api.paginate(
            "/services/s/env-vars",
            query={"limit": 2},
            next_page=render_next,
            items=lambda response: response.json(),
        )
    ]
    assert keys == ["A", "B", "C"]
    assert [s.query for s in server.seen] == [{"limit": ["2"]}, {"limit": ["2"], "cursor": ["c2"]}]
    server.answers = [
        Answer(200, {"deployments": [1], "pagination": {"next": 17}}),
        Answer(200, {"deployments": [2], "pagination": {"next": None}}),
    ]
    pages = list(
        api.paginate(
            "/v6/deployments", next_page=rest.json_cursor("pagination", "next", param="until")
        )
    )
    assert [p.json()["deployments"] for p in pages] == [[1], [2]]
    assert server.seen[-1].query == {"until": ["17"]}
    server.answers = [Answer(200, {"next": f"{server.url}/v1/page2"}), Answer(200, {"next": None})]
    list(api.paginate("/page1", next_page=lambda r: r.json()["next"]))
    assert server.seen[-1].path == "/v1/page2"


def test_a_cursor_that_does_not_move_is_an_error_not_a_loop(script: Callable) -> None:
    server = script(*[Answer(200, {"next": "same"})] * 3)
    api = client(server.url)
    with pytest.raises(RestError, match="the vendor returned the same next page twice"):
        list(api.paginate("/v1/list", next_page=lambda r: {"cursor": r.json()["next"]}))
    assert len(server.seen) == 2


# ------------------------------------------------------------------ the modules' options


def test_the_rest_fragment_documents_the_shared_spec_and_every_rest_module_uses_it() -> None:
    fragment = load_plugin("doc_fragments", "opsbook_rest").ModuleDocFragment
    documented = yaml.safe_load(fragment.DOCUMENTATION)["options"]
    spec = rest.rest_argument_spec()
    assert set(documented) == set(spec)
    for name, option in spec.items():
        assert documented[name]["type"] == option["type"], name
        assert documented[name].get("default") == option.get("default"), name
    users = [
        p.stem
        for p in (PROJECT_ROOT / "library").glob("*.py")
        if "rest_argument_spec()" in p.read_text()
    ]
    assert {"twilio_auth_token", "stripe_key_check"} <= set(users)
    for name in users:
        doc = yaml.safe_load(load_library(name).DOCUMENTATION)
        assert "opsbook.runbooks.opsbook_rest" in doc["extends_documentation_fragment"], name
        assert not set(spec) & set(doc["options"]), name  # described once, in the fragment
    assert rest.rest_option_errors({"base_url": "api.stripe.com", "timeout_s": 0}) == [
        "base_url must be an http:// or https:// URL, got 'api.stripe.com'",
        "timeout_s must be > 0, got 0",
        "deadline_s must be > 0, got None",
    ]
