"""tests/platform_standin.py's AppFront: the "deployed app" of the platform stand-ins answers
GET /api/me (Bearer token, JWT_SECRET[_PREVIOUS]) and GET /api/session (cookie ``session``,
NEXTAUTH_SECRET[_PREVIOUS]) with the env each instance was given, as the sample app does -
checked against the sample app itself, run in-process on the same env."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab.sampleapp import app as sampleapp
from tests.platform_standin import INSTANCE_HEADER, AppFront
from tests.standins import stop_server

NEW, OLD, OTHER = "jwt-new-" + "1" * 24, "jwt-old-" + "2" * 24, "jwt-other-" + "3" * 22
AUTH_NEW, AUTH_OLD = "auth-new-" + "4" * 23, "auth-old-" + "5" * 23
ENV = {
    "JWT_SECRET": NEW,
    "JWT_SECRET_PREVIOUS": OLD,
    "NEXTAUTH_SECRET": AUTH_NEW,
    "NEXTAUTH_SECRET_PREVIOUS": AUTH_OLD,
}


def get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url + path, headers=headers or {})
    try:
        with urllib.request.build_opener().open(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"theme=dark; session={token}"}


@pytest.fixture
def front() -> Iterator[AppFront]:
    app = AppFront()
    yield app
    app.close()


def test_api_me_verifies_with_jwt_secret_and_its_previous(front: AppFront) -> None:
    front.serve("dpl_1", "1.0.0", env=ENV)
    assert get(front.url, "/api/me", bearer(sampleapp.new_token("ada", NEW))) == (
        200,
        {"sub": "ada", "key": "current"},
    )
    assert get(front.url, "/api/me", bearer(sampleapp.new_token("bob", OLD))) == (
        200,
        {"sub": "bob", "key": "previous"},
    )
    assert get(front.url, "/api/me", bearer(sampleapp.new_token("eve", OTHER))) == (
        401,
        {"error": "bad signature"},
    )
    expired = sampleapp.new_token("ada", NEW, now=time.time() - 7200)
    assert get(front.url, "/api/me", bearer(expired)) == (401, {"error": "token expired"})
    assert get(front.url, "/api/me") == (401, {"error": "no token"})
    # the session's secret is not JWT_SECRET's
    assert get(front.url, "/api/me", bearer(sampleapp.new_token("ada", AUTH_NEW)))[0] == 401


def test_api_session_verifies_the_cookie_with_nextauth_secret(front: AppFront) -> None:
    front.serve("dpl_1", "1.0.0", env=ENV)
    ok = get(front.url, "/api/session", cookie(sampleapp.new_token("ada", AUTH_NEW)))
    assert ok == (200, {"sub": "ada", "key": "current"})
    old = get(front.url, "/api/session", cookie(sampleapp.new_token("ada", AUTH_OLD)))
    assert old == (200, {"sub": "ada", "key": "previous"})
    assert get(front.url, "/api/session", cookie(sampleapp.new_token("ada", NEW)))[0] == 401
    assert get(front.url, "/api/session", bearer(sampleapp.new_token("ada", AUTH_NEW))) == (
        401,
        {"error": "no token"},  # a Bearer token is no session cookie
    )


def test_no_env_refuses_every_token_and_maintenance_answers_first(front: AppFront) -> None:
    front.serve("bare", "1.0.0")  # nothing set: no key to verify with (401, as the app does)
    token = sampleapp.new_token("ada", NEW)
    assert get(front.url, "/api/me", bearer(token)) == (
        401,
        {"error": "no key to verify tokens with"},
    )
    front.serve("down", "1.0.0", maintenance=True, env=ENV)
    front.route("down")
    assert get(front.url, "/api/me", bearer(token)) == (503, {"status": "maintenance"})
    assert get(front.url, "/api/session", cookie(token))[0] == 503


def test_each_instance_answers_with_its_own_env(front: AppFront) -> None:
    front.serve("m_old", "1.0.0", env={"JWT_SECRET": OLD})
    front.serve("m_new", "1.1.0", env={"JWT_SECRET": NEW, "JWT_SECRET_PREVIOUS": OLD})
    front.route("m_old")
    token = sampleapp.new_token("ada", NEW)
    assert get(front.url, "/api/me", bearer(token))[0] == 401  # the routed one: m_old
    pinned = {**bearer(token), INSTANCE_HEADER: "m_new"}
    assert get(front.url, "/api/me", pinned) == (200, {"sub": "ada", "key": "current"})
    given = {"JWT_SECRET": NEW}
    front.serve("m_copy", "1.0.0", env=given)
    given["JWT_SECRET"] = OTHER  # the caller's dict changing later does not reach the app
    assert front.env("m_copy") == {"JWT_SECRET": NEW}
    assert get(front.url, "/api/version", pinned) == (200, {"version": "1.1.0"})


@pytest.fixture
def real_app(tmp_path: Path) -> Iterator[str]:
    """The sample app itself, serving with ENV in its .env."""
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in ENV.items()))
    server = sampleapp.make_server("127.0.0.1", 0, sampleapp.AppState(tmp_path, tmp_path))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    stop_server(server)


def test_the_same_answers_as_the_sample_app(front: AppFront, real_app: str) -> None:
    front.serve("dpl_1", "1.0.0", env=ENV)
    _, payload, signature = sampleapp.new_token("ada", NEW).split(".")
    unsigned_header = sampleapp.b64url(b'{"alg":"none","typ":"JWT"}')
    tokens = {
        "current": sampleapp.new_token("ada", NEW),
        "previous": sampleapp.new_token("ada", OLD),
        "auth": sampleapp.new_token("ada", AUTH_NEW),
        "auth_previous": sampleapp.new_token("ada", AUTH_OLD),
        "other": sampleapp.new_token("ada", OTHER),
        "expired": sampleapp.new_token("ada", NEW, now=time.time() - 7200),
        "no_exp": sampleapp.sign_token({"sub": "ada"}, NEW),
        "alg_none": f"{unsigned_header}.{payload}.{signature}",
        "garbage": "not.a.token!",
    }
    for name, token in tokens.items():
        for path, headers in (("/api/me", bearer(token)), ("/api/session", cookie(token))):
            assert get(front.url, path, headers) == get(real_app, path, headers), (name, path)
    for path in ("/api/me", "/api/session"):
        assert get(front.url, path) == get(real_app, path), path
