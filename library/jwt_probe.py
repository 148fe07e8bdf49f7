#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""jwt_probe: prove that an app accepts (or refuses) an HS256 token (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: jwt_probe
short_description: Send an HS256 JWT to an app and judge the HTTP status it answers
description:
  - "Mints a JSON Web Token signed with HMAC-SHA256 (C(alg: HS256)) with O(secret) - claims
    C(sub) (O(sub)), C(iat) (now) and C(exp) (now + O(ttl_s)) - and sends it in a C(GET) to
    O(url) as C(Authorization: Bearer <token>), or as the cookie named O(cookie) when given
    (a NextAuth-like session). Or sends the token given in O(token) instead of minting one,
    so a test can keep a token minted before a rotation and prove it still works during the
    grace period, and is refused after the old secret is revoked."
  - "RV(ok) is true when the answer's status is one of O(expect_status) (C([200]) - the token
    is accepted; C([401]) proves a token is refused). With O(fail_on_mismatch=true) (the
    default) any other status, or no answer at all, fails the task with a message naming the
    URL and the expected and actual status."
  - The secret and the token are never returned or shown, in a result or a message - only
    their fingerprints (C(sha256:) and the first 12 hex digits of the sha256 of the text, the
    rule every opsbook rotation module shares). Both options are C(no_log). A token the app
    echoes in its answer is replaced by C(<token>) in RV(json).
  - Redirects are not followed (a token is never sent on to another location); a C(3xx) is
    the status judged. Proxies from the environment are used.
version_added: "0.3.0"
author:
  - opsbook maintainers (@opsbook)
# the action, diff_mode, platform attributes
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_controller
options:
  url:
    description:
      - The URL that needs the token (C(http://10.0.0.11:8080/api/me)), C(http://) or
        C(https://).
    type: str
    required: true
  secret:
    description:
      - The HS256 key to sign the token with, as the app reads it (its C(JWT_SECRET),
        C(NEXTAUTH_SECRET), ...). At least 32 characters (a shorter HMAC key is weak, and is
        refused).
      - Exactly one of O(secret) and O(token) is given.
    type: str
  token:
    description:
      - A token to send as it is, instead of minting one (a compact JWT - three base64url
        parts joined by dots).
      - Exactly one of O(secret) and O(token) is given.
    type: str
  sub:
    description:
      - The C(sub) claim of the minted token (the user the app sees).
    type: str
    default: opsbook-probe
  ttl_s:
    description:
      - Seconds until the minted token expires (its C(exp) claim), 1 to 86400.
    type: int
    default: 300
  cookie:
    description:
      - "Send the token as the cookie of this name (C(session)) instead of an
        C(Authorization: Bearer) header."
    type: str
  expect_status:
    description:
      - The statuses that count as RV(ok).
    type: list
    elements: int
    default: [200]
  timeout_s:
    description:
      - Seconds to wait for the answer.
    type: float
    default: 10
  validate_certs:
    description:
      - Validate the TLS certificate of an C(https://) URL.
    type: bool
    default: true
  fail_on_mismatch:
    description:
      - Fail the task when the status is not one of O(expect_status) (or nothing answered).
        With C(false) the caller reads RV(ok).
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Read-only - the request is sent in check mode too, and changes nothing.
notes:
  - The task always reports C(changed=false).
  - O(secret) and O(token) are C(no_log) options, so a task needs no C(no_log) of its own to
    keep them out of the output at any verbosity, and its failure message stays readable.
  - The token is judged by the app only; the module does not decode the app's answer beyond
    returning it (RV(json)).
seealso:
  - module: opsbook.runbooks.http_check
"""

EXAMPLES = r"""
- name: Prove the app accepts a token signed with the new JWT secret
  jwt_probe:
    url: "{{ app_base_url }}/api/me"
    secret: "{{ __rotation_pending_value }}"
  delegate_to: localhost

- name: Prove a token issued before the rotation still works during the grace period
  jwt_probe:
    url: "{{ app_base_url }}/api/me"
    token: "{{ __token_before_rotation }}"
  delegate_to: localhost
  register: during_grace  # during_grace.json.key is "previous"

- name: Prove a session cookie signed with the revoked secret is refused
  jwt_probe:
    url: "{{ app_base_url }}/api/session"
    secret: "{{ __old_nextauth_secret }}"
    cookie: session
    expect_status: [401]
  delegate_to: localhost
"""

RETURN = r"""
ok:
  description: Whether the status is one of O(expect_status).
  returned: always
  type: bool
  sample: true
status:
  description: The HTTP status of the answer (null when none came).
  returned: always
  type: int
  sample: 200
expected_status:
  description: O(expect_status), as judged.
  returned: always
  type: list
  elements: int
  sample: [200]
elapsed_ms:
  description: Milliseconds from sending the request to having read the answer (null when
    none came).
  returned: always
  type: float
  sample: 3.2
url:
  description: The URL probed (without any user and password in it).
  returned: always
  type: str
  sample: http://127.0.0.1:8080/api/me
sent_as:
  description: How the token was sent - C(bearer), or C(cookie:<name>).
  returned: always
  type: str
  sample: bearer
minted:
  description: Whether the token was minted from O(secret) (false - O(token) was sent).
  returned: always
  type: bool
token_fingerprint:
  description: The fingerprint of the token sent (never the token); the same token probed
    twice shows the same fingerprint.
  returned: always
  type: str
  sample: sha256:4f1c0ab2d3e9
secret_fingerprint:
  description: The fingerprint of O(secret) (null when O(token) was given).
  returned: always
  type: str
  sample: sha256:9a0b1c2d3e4f
json:
  description: The answer's body when it is JSON, else null. The sample app's C(/api/me)
    says which key verified the token, C(current) or C(previous).
  sample: {"sub": "opsbook-probe", "key": "previous"}
  returned: always
  type: raw
error:
  description: Why no answer came (connection refused, timed out, ...), else null.
  returned: always
  type: str
msg:
  description: One line - the URL, how the token was sent, the status and whether it was
    expected.
  returned: always
  type: str
  sample: "GET http://127.0.0.1:8080/api/me (bearer token sha256:4f1c0ab2d3e9): 200 in 3 ms,
    expected"
"""

import base64
import contextlib
import hashlib
import hmac
import json
import re
import time
import urllib.error
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ansible.module_utils.urls import open_url
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_http import (
    describe_error,
    validate_params,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_text import fingerprint

MIN_SECRET_CHARS = 32
MAX_TTL_S = 86400
MAX_BODY_BYTES = 65536
JWT_SHAPE = re.compile(r"[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]*\Z")
COOKIE_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z")

# The rules AnsibleModule applies in a module process; execute() applies the same in the worker.
ARGUMENT_RULES: dict[str, Any] = {
    "mutually_exclusive": [("secret", "token")],
    "required_one_of": [("secret", "token")],
}


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "url": {"type": "str", "required": True},
        "secret": {"type": "str", "no_log": True},
        "token": {"type": "str", "no_log": True},
        "sub": {"type": "str", "default": "opsbook-probe"},
        "ttl_s": {"type": "int", "default": 300},
        "cookie": {"type": "str"},
        "expect_status": {"type": "list", "elements": "int", "default": [200]},
        "timeout_s": {"type": "float", "default": 10.0},
        "validate_certs": {"type": "bool", "default": True},
        "fail_on_mismatch": {"type": "bool", "default": True},
    }


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint(secret: str, sub: str, ttl_s: int, now: float | None = None) -> str:
    """A compact HS256 JWT with sub, iat and exp, signed with secret."""
    issued = int(time.time() if now is None else now)
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"sub": sub, "iat": issued, "exp": issued + ttl_s}
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = hmac.new(secret.encode("utf-8"), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def shown_url(url: str) -> str:
    """url without a user or password in it (what may appear in a message)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def input_errors(params: dict[str, Any]) -> list[str]:
    """Every problem of the input, naming the option, never a secret's value."""
    given = [name for name in ("secret", "token") if params.get(name) is not None]
    if len(given) != 1:
        return ["give exactly one of secret (to mint a token) and token (to send one)"]
    errors = validate_params(
        {
            "url": params["url"],
            "timeout_s": params["timeout_s"],
            "expect_status": params["expect_status"],
        }
    )
    errors = [e.replace(repr(params["url"]), repr(shown_url(params["url"]))) for e in errors]
    if params.get("secret") is not None and len(params["secret"]) < MIN_SECRET_CHARS:
        errors.append(
            f"secret is {len(params['secret'])} characters; an HS256 secret needs at least "
            f"{MIN_SECRET_CHARS}"
        )
    if params.get("token") is not None and not JWT_SHAPE.match(params["token"]):
        errors.append("token is not a compact JWT (three base64url parts joined by dots)")
    if params.get("secret") is not None:
        if not params["sub"]:
            errors.append("sub must not be empty")
        if not 1 <= params["ttl_s"] <= MAX_TTL_S:
            errors.append(f"ttl_s must be 1 to {MAX_TTL_S}, got {params['ttl_s']}")
    if params.get("cookie") is not None and not COOKIE_NAME.match(params["cookie"]):
        errors.append(
            f"cookie must be a cookie name (a token of RFC 6265), got {params['cookie']!r}"
        )
    return errors


def default_get(
    url: str, headers: dict[str, str], timeout_s: float, validate_certs: bool
) -> tuple[int, bytes]:
    """GET url without following redirects: (status, body); HTTP errors are statuses, other
    failures raise."""
    try:
        response = open_url(
            url,
            method="GET",
            headers=headers,
            timeout=timeout_s,
            validate_certs=validate_certs,
            http_agent="opsbook-jwt-probe",
            follow_redirects="none",
        )
    except urllib.error.HTTPError as exc:  # 3xx (not followed), 4xx, 5xx: answers too
        response = exc
    try:
        body = response.read(MAX_BODY_BYTES) or b""
    except Exception:  # an error answer without a body
        body = b""
    finally:
        with contextlib.suppress(Exception):
            response.close()
    return int(getattr(response, "status", None) or response.code), body


def scrubbed_json(body: bytes, token: str) -> Any:
    """The body parsed as JSON with the token replaced by "<token>" (None when not JSON)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        return json.loads(text.replace(token, "<token>")) if text.strip() else None
    except ValueError:
        return None


def probe(
    params: dict[str, Any],
    get: Callable[[str, dict[str, str], float, bool], tuple[int, bytes]] = default_get,
) -> dict[str, Any]:
    """Mint (or take) the token, send it, judge the status: the module's result."""
    minted = params.get("secret") is not None
    token = mint(params["secret"], params["sub"], params["ttl_s"]) if minted else params["token"]
    cookie = params.get("cookie")
    headers = {"Accept": "application/json"}
    if cookie:
        headers["Cookie"] = f"{cookie}={token}"
    else:
        headers["Authorization"] = f"Bearer {token}"
    sent_as = f"cookie:{cookie}" if cookie else "bearer"
    url = shown_url(params["url"])
    expected = list(params["expect_status"])
    status: int | None = None
    elapsed_ms: float | None = None
    body, error = b"", None
    started = time.monotonic()
    try:
        status, body = get(params["url"], headers, params["timeout_s"], params["validate_certs"])
        elapsed_ms = round((time.monotonic() - started) * 1000.0, 1)
    except Exception as exc:  # no answer: connection refused, timeout, TLS
        error = describe_error(exc).replace(token, "<token>")
    ok = status in expected
    what = f"GET {url} ({'session cookie ' + cookie if cookie else 'bearer'} token "
    what += f"{fingerprint(token)})"
    wanted = " or ".join(str(s) for s in expected)
    if status is None:
        msg = f"{what}: no answer ({error}), expected status {wanted}"
    elif ok:
        msg = f"{what}: {status} in {elapsed_ms:.0f} ms, expected"
    else:
        msg = f"{what}: status {status}, expected {wanted}"
    result: dict[str, Any] = {
        "changed": False,
        "ok": ok,
        "status": status,
        "expected_status": expected,
        "elapsed_ms": elapsed_ms,
        "url": url,
        "sent_as": sent_as,
        "minted": minted,
        "token_fingerprint": fingerprint(token),
        "secret_fingerprint": fingerprint(params["secret"]) if minted else None,
        "json": scrubbed_json(body, token),
        "error": error,
        "msg": msg,
    }
    if not ok and params["fail_on_mismatch"]:
        result["failed"] = True
    return result


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters (read-only: the same in check mode); never
    a secret or a token in the result. main() runs it in a module process; on the controller
    the action plugin (action_plugins/jwt_probe.py) runs it in the task's worker."""
    del check_mode
    errors = input_errors(params)
    if errors:
        msg = "jwt_probe: invalid input: " + "; ".join(errors) + "; nothing was sent"
        return {"failed": True, "changed": False, "msg": msg}
    return probe(params)


def main() -> None:
    run_module(argument_spec(), execute, **ARGUMENT_RULES)


if __name__ == "__main__":
    main()
