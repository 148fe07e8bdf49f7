#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""http_check: one HTTP GET with a millisecond latency measurement (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: http_check
short_description: GET a URL and judge its status, latency (in milliseconds) and JSON body
description:
  - "Sends one HTTP(S) C(GET) to O(url) from the host the task runs on (usually the controller,
    with C(delegate_to: localhost)) and measures the latency with a monotonic clock, in
    milliseconds. M(ansible.builtin.uri) only reports whole seconds, too coarse for a 500 ms
    threshold."
  - The latency is the time from opening the connection to having read the whole body
    (what C(curl -w %{time_total}) reports).
  - Judges the answer against O(expect_status), O(latency_threshold_ms) and
    O(expect_json_keys) and O(expect_json) and lists every problem found in
    RV(problems). RV(ok) is true when
    there is none.
  - A bad answer does not fail the task unless O(fail_on_problem=true); the caller decides what
    a problem means (the opsbook C(health_check) role turns problems into a verdict).
    Invalid input always fails the task.
  - With O(retries), a check with problems is repeated (after O(retry_delay_s)) until one
    attempt has none, so a transient blip does not fail a health check; the result is the one
    of the last attempt.
version_added: "0.1.0"
author:
  - opsbook maintainers
options:
  url:
    description:
      - The C(http://) or C(https://) URL to GET.
    type: str
    required: true
  timeout_s:
    description:
      - Seconds to wait for the connection and for each read before giving up.
    type: float
    default: 10
  expect_status:
    description:
      - HTTP status codes that count as healthy.
    type: list
    elements: int
    default: [200]
  latency_threshold_ms:
    description:
      - Latency, in milliseconds, above which the answer is a problem.
      - Not set means no latency judgement (the latency is still measured and returned).
    type: float
  parse_json:
    description:
      - Parse the body as JSON and return it in RV(json). A body that is not JSON gives
        RV(json=null) and is a problem only when O(expect_json_keys) is set.
    type: bool
    default: true
  expect_json_keys:
    description:
      - Keys the JSON body must be an object with (for example C(version) for C(/api/version)).
        A missing key, or a body that is not a JSON object, is a problem.
    type: list
    elements: str
    default: []
  headers:
    description:
      - Extra request headers. Treated as secret (they may carry a token).
    type: dict
    default: {}
  validate_certs:
    description:
      - Verify the server's TLS certificate for C(https://) URLs.
    type: bool
    default: true
  use_proxy:
    description:
      - Use the proxy from the environment (C(https_proxy), C(http_proxy), C(no_proxy)).
    type: bool
    default: true
  expect_json:
    description:
      - Values the JSON body must hold, key by key, for example C(version) set to C(2.0.0) for
        C(/api/version) after a deploy. Values are compared as strings, so the number C(2)
        matches the string C(2).
      - A missing key, another value, or a body that is not a JSON object, is a problem.
      - With O(retries), a deploy's health gate waits until the new version answers.
    type: dict
    default: {}
  max_body_bytes:
    description:
      - At most this many bytes of the body are read (and parsed); the rest is ignored.
    type: int
    default: 1048576
  retries:
    description:
      - How many more times to try when an attempt has problems. C(0) means a single attempt.
    type: int
    default: 0
  retry_delay_s:
    description:
      - Seconds to wait between attempts.
    type: float
    default: 1
  fail_on_problem:
    description:
      - Fail the task when the (last) attempt has problems. When false the task succeeds and
        the caller reads RV(ok) and RV(problems).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: The module only reads (one GET); it runs and reports the same in check mode.
  diff_mode:
    support: none
    description: Nothing is changed, so there is nothing to diff.
  platform:
    platforms: posix
    description: Runs wherever Python runs; usually on the controller.
notes:
  - Redirects are followed for GET, like a browser; RV(url) is the final URL.
  - Read-only; RV(changed) is always false.
seealso:
  - module: ansible.builtin.uri
"""

EXAMPLES = r"""
- name: Check /health from the controller, 500 ms threshold, 2 retries
  http_check:
    url: "{{ app_base_url }}/health"
    latency_threshold_ms: 500
    timeout_s: 5
    retries: 2
    retry_delay_s: 2
  delegate_to: localhost
  register: app_health

- name: Read the version the app reports
  http_check:
    url: "{{ app_base_url }}/api/version"
    expect_json_keys: [version]
  delegate_to: localhost
  register: app_version

- name: Fail the task directly when the answer is not healthy
  http_check:
    url: https://example.com/health
    expect_status: [200, 204]
    fail_on_problem: true
"""

RETURN = r"""
url:
  description: The final URL, after redirects.
  returned: always
  type: str
  sample: http://127.0.10.1:8080/health
status:
  description: HTTP status of the answer; null when no HTTP answer was received.
  returned: always
  type: int
  sample: 200
latency_ms:
  description: Milliseconds from the request to the last byte of the body (one decimal);
    null when no HTTP answer was received.
  returned: always
  type: float
  sample: 23.4
json:
  description: The parsed JSON body; null when O(parse_json=false) or the body is not JSON.
  returned: always
  type: raw
  sample: {"status": "ok", "version": "1.0.0"}
content_type:
  description: The C(Content-Type) header of the answer.
  returned: always
  type: str
  sample: application/json
body:
  description: The start of the body (at most 1024 characters), for diagnosis.
  returned: always
  type: str
  sample: '{"status": "ok", "version": "1.0.0"}'
error:
  description: Why no (complete) HTTP answer was received; null when one was.
  returned: always
  type: str
  sample: "connection refused"
ok:
  description: True when the last attempt has no problem.
  returned: always
  type: bool
  sample: true
problems:
  description: Every problem found in the last attempt, one readable sentence each.
  returned: always
  type: list
  elements: str
  sample: ["latency 812 ms over threshold 500 ms"]
attempts:
  description: How many attempts were made.
  returned: always
  type: int
  sample: 1
msg:
  description: A one-line summary of the check.
  returned: always
  type: str
  sample: "GET http://127.0.10.1:8080/health: 200 in 23 ms, ok"
"""

import contextlib
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

BODY_EXCERPT_CHARS = 1024


@dataclass
class Response:
    """What one GET produced. ``status`` is None when no HTTP answer arrived."""

    url: str
    status: int | None = None
    latency_ms: float | None = None
    body: bytes = b""
    content_type: str = ""
    error: str | None = None


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "url": {"type": "str", "required": True},
        "timeout_s": {"type": "float", "default": 10.0},
        "expect_status": {"type": "list", "elements": "int", "default": [200]},
        "latency_threshold_ms": {"type": "float"},
        "parse_json": {"type": "bool", "default": True},
        "expect_json_keys": {"type": "list", "elements": "str", "default": []},
        "expect_json": {"type": "dict", "default": {}},
        "headers": {"type": "dict", "default": {}, "no_log": True},
        "validate_certs": {"type": "bool", "default": True},
        "use_proxy": {"type": "bool", "default": True},
        "max_body_bytes": {"type": "int", "default": 1048576},
        "retries": {"type": "int", "default": 0},
        "retry_delay_s": {"type": "float", "default": 1.0},
        "fail_on_problem": {"type": "bool", "default": False},
    }


def validate_params(params: dict[str, Any]) -> list[str]:
    """Input errors, one sentence each naming the option (empty when the input is valid)."""
    errors = []
    url = params.get("url") or ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        errors.append(f"url must be an http:// or https:// URL with a host, got {url!r}")
    if params.get("timeout_s") is not None and params["timeout_s"] <= 0:
        errors.append(f"timeout_s must be > 0, got {params['timeout_s']}")
    threshold = params.get("latency_threshold_ms")
    if threshold is not None and threshold <= 0:
        errors.append(f"latency_threshold_ms must be > 0, got {threshold}")
    statuses = params.get("expect_status") or []
    if not statuses:
        errors.append("expect_status must list at least one status code")
    bad = [s for s in statuses if not 100 <= s <= 599]
    if bad:
        errors.append(f"expect_status holds codes outside 100-599: {bad}")
    if params.get("retries", 0) < 0:
        errors.append(f"retries must be >= 0, got {params['retries']}")
    if params.get("retry_delay_s", 0) < 0:
        errors.append(f"retry_delay_s must be >= 0, got {params['retry_delay_s']}")
    if params.get("max_body_bytes", 1) < 1:
        errors.append(f"max_body_bytes must be >= 1, got {params['max_body_bytes']}")
    return errors


def parse_json_body(body: bytes) -> tuple[Any, str | None]:
    """(parsed value, None) or (None, reason) when the body is not JSON."""
    if not body.strip():
        return None, "empty body"
    try:
        return json.loads(body.decode("utf-8")), None
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"not JSON ({exc.__class__.__name__})"


def format_ms(value: float) -> str:
    return f"{value:.0f} ms"


def evaluate(
    response: Response,
    parsed: Any,
    expect_status: list[int],
    latency_threshold_ms: float | None = None,
    expect_json_keys: list[str] | None = None,
    expect_json: dict[str, Any] | None = None,
) -> list[str]:
    """Every problem of one answer, as readable sentences (empty list: healthy)."""
    if response.status is None:
        return [f"no HTTP answer: {response.error or 'unknown error'}"]
    problems = []
    if response.status not in expect_status:
        wanted = " or ".join(str(s) for s in expect_status)
        problems.append(f"status {response.status}, expected {wanted}")
    if (
        latency_threshold_ms is not None
        and response.latency_ms is not None
        and response.latency_ms > latency_threshold_ms
    ):
        problems.append(
            f"latency {format_ms(response.latency_ms)} over threshold "
            f"{format_ms(latency_threshold_ms)}"
        )
    if expect_json_keys:
        if not isinstance(parsed, dict):
            problems.append(
                "body is not a JSON object (expected keys: " + ", ".join(expect_json_keys) + ")"
            )
        else:
            missing = [k for k in expect_json_keys if k not in parsed]
            if missing:
                problems.append("JSON body lacks key(s): " + ", ".join(missing))
    if expect_json:
        if not isinstance(parsed, dict):
            wanted = ", ".join(f"{k}={v}" for k, v in expect_json.items())
            problems.append(f"body is not a JSON object (expected {wanted})")
        else:
            for key, value in expect_json.items():
                if key not in parsed:
                    problems.append(f"JSON body lacks key {key} (expected {key}={value})")
                elif str(parsed[key]) != str(value):
                    problems.append(f"{key} is {parsed[key]}, expected {value}")
    return problems


def describe_error(exc: BaseException) -> str:
    """A short, readable reason for a failed request."""
    if isinstance(exc, URLError) and not isinstance(exc, HTTPError):
        reason = exc.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return "timed out"
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        return str(reason) or exc.__class__.__name__
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{exc.__class__.__name__}: {exc}".rstrip(": ")


def fetch(
    url: str,
    timeout_s: float = 10.0,
    headers: dict[str, str] | None = None,
    validate_certs: bool = True,
    use_proxy: bool = True,
    max_body_bytes: int = 1048576,
    clock: Callable[[], float] = time.monotonic,
) -> Response:
    """GET ``url`` once and time it to the last byte of the body. Never raises for I/O."""
    started = clock()
    try:
        handle = open_url(
            url,
            method="GET",
            headers=headers or None,
            timeout=timeout_s,
            validate_certs=validate_certs,
            use_proxy=use_proxy,
            follow_redirects="safe",
        )
    except HTTPError as exc:  # a real HTTP answer with a non-2xx status
        handle = exc
    except Exception as exc:
        return Response(url=url, error=describe_error(exc))
    try:
        body = handle.read(max_body_bytes) or b""
    except Exception as exc:
        return Response(url=url, error=f"reading the body failed: {describe_error(exc)}")
    finally:
        with contextlib.suppress(Exception):
            handle.close()
    elapsed_ms = round((clock() - started) * 1000.0, 1)
    status = getattr(handle, "status", None) or getattr(handle, "code", None)
    final_url = handle.geturl() if hasattr(handle, "geturl") else url
    return Response(
        url=final_url or url,
        status=int(status) if status is not None else None,
        latency_ms=elapsed_ms,
        body=body,
        content_type=(handle.headers.get("Content-Type", "") if handle.headers else ""),
    )


def summarize(url: str, response: Response, problems: list[str]) -> str:
    """``GET <url>: 200 in 23 ms, ok`` or ``GET <url>: <problems>``."""
    if response.status is None:
        return f"GET {url}: " + "; ".join(problems)
    head = f"GET {url}: {response.status} in {format_ms(response.latency_ms or 0)}"
    return head + (", ok" if not problems else ": " + "; ".join(problems))


def run_check(
    params: dict[str, Any],
    fetcher: Callable[..., Response] = fetch,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Attempt the check (with retries) and build the module result (without ``failed``)."""
    attempts = 0
    while True:
        attempts += 1
        response = fetcher(
            params["url"],
            timeout_s=params["timeout_s"],
            headers=params.get("headers") or {},
            validate_certs=params["validate_certs"],
            use_proxy=params["use_proxy"],
            max_body_bytes=params["max_body_bytes"],
        )
        parsed = None
        if params["parse_json"] or params["expect_json_keys"] or params["expect_json"]:
            parsed, _ = parse_json_body(response.body)
        problems = evaluate(
            response,
            parsed,
            params["expect_status"],
            params.get("latency_threshold_ms"),
            params["expect_json_keys"],
            params.get("expect_json") or {},
        )
        if not problems or attempts > params["retries"]:
            break
        sleep(params["retry_delay_s"])
    return {
        "changed": False,
        "url": response.url,
        "status": response.status,
        "latency_ms": response.latency_ms,
        "json": parsed if (params["parse_json"] or params.get("expect_json")) else None,
        "content_type": response.content_type,
        "body": response.body[: BODY_EXCERPT_CHARS * 4].decode("utf-8", "replace")[
            :BODY_EXCERPT_CHARS
        ],
        "error": response.error,
        "ok": not problems,
        "problems": problems,
        "attempts": attempts,
        "msg": summarize(params["url"], response, problems),
    }


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    errors = validate_params(module.params)
    if errors:
        module.fail_json(msg="http_check: invalid input: " + "; ".join(errors))
    result = run_check(module.params)
    if module.params["fail_on_problem"] and not result["ok"]:
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
