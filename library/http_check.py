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
  - opsbook maintainers (@opsbook)
# run in the task's worker on the controller
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_controller
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
    support: full
    platforms: posix
    description: Runs wherever Python runs; usually on the controller.
notes:
  - Redirects are followed for GET, like a browser; RV(url) is the final URL.
  - Read-only; C(changed) is always false.
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

from typing import Any

# re-exported for tests (ruff's F401 and pylint's unused-import told so)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_http import (  # noqa: F401  # pylint: disable=unused-import
    BODY_EXCERPT_CHARS,
    Response,
    describe_error,
    evaluate,
    fetch,
    format_ms,
    parse_json_body,
    run_check,
    summarize,
    validate_params,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "url": {"type": "str", "required": True},
        "timeout_s": {"type": "float", "default": 10.0},
        "expect_status": {"type": "list", "elements": "int", "default": [200]},
        "latency_threshold_ms": {"type": "float"},
        "parse_json": {"type": "bool", "default": True},
        # names of JSON keys, not secrets (no_log=False tells ansible-test's no-log-needed so)
        "expect_json_keys": {"type": "list", "elements": "str", "default": [], "no_log": False},
        "expect_json": {"type": "dict", "default": {}},
        "headers": {"type": "dict", "default": {}, "no_log": True},
        "validate_certs": {"type": "bool", "default": True},
        "use_proxy": {"type": "bool", "default": True},
        "max_body_bytes": {"type": "int", "default": 1048576},
        "retries": {"type": "int", "default": 0},
        "retry_delay_s": {"type": "float", "default": 1.0},
        "fail_on_problem": {"type": "bool", "default": False},
    }


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters: the result, with ``failed`` on a failure.
    main() runs it in a module process; on the controller the action plugin
    (action_plugins/http_check.py) runs it in the task's worker."""
    del check_mode  # one GET: the same in check mode
    errors = validate_params(params)
    if errors:
        msg = "http_check: invalid input: " + "; ".join(errors)
        return {"failed": True, "changed": False, "msg": msg}
    result = run_check(params)
    if params["fail_on_problem"] and not result["ok"]:
        return {**result, "failed": True}
    return result


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
