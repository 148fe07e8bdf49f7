#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""http_gate: the health gate of a deploy batch, every host checked at once (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: http_gate
short_description: Health-gate several app hosts at once - /health 200 and the expected version
description:
  - "For every target, from the host the task runs on (the controller, with
    C(delegate_to: localhost) and C(run_once: true)): C(GET <base_url><health_path>) must
    answer 200, then C(GET <base_url><version_path>) must be a JSON object whose
    O(version_key) equals the target's C(version). Both checks are retried until they pass
    or O(retries) run out, like M(opsbook.runbooks.http_check)."
  - The targets are checked concurrently (one thread each), so a batch of 16 hosts takes as
    long as its slowest host, and the whole batch costs one module run on the controller
    instead of two per host. C(deploy.yml) and C(rollback.yml) use it once per batch; each
    host then fails on its own entry in RV(by_host), so a failed host is rolled back alone.
  - Never changes anything. The task fails only on invalid input (or with
    O(fail_on_problem=true) when a target fails).
version_added: "0.1.0"
author:
  - opsbook maintainers (@opsbook)
# the action, diff_mode, platform attributes
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_controller
options:
  targets:
    description:
      - The hosts to check.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The name the result is filed under (the inventory hostname).
        type: str
        required: true
      base_url:
        description: The app's base URL on that host (C(http://host:port)).
        type: str
        required: true
      version:
        description: The version the app must report; empty judges the health path only.
        type: str
        default: ""
      headers:
        description:
          - Request headers sent to this target only - e.g. C(fly-force-instance-id) to reach
            one Fly.io machine behind the app's shared address.
        type: dict
        default: {}
  health_path:
    description: Path that must answer 200.
    type: str
    default: /health
  version_path:
    description: Path answering a JSON object that holds the version.
    type: str
    default: /api/version
  version_key:
    description: JSON key of the version in that answer.
    type: str
    default: version
  retries:
    description: Attempts after the first one, for each of the two checks of a target.
    type: int
    default: 20
  retry_delay_s:
    description: Seconds between attempts.
    type: float
    default: 0.5
  timeout_s:
    description: Seconds to wait for each HTTP answer.
    type: float
    default: 5
  latency_threshold_ms:
    description:
      - Latency of the health path above which an answer is a problem; unset means no judgement.
    type: float
  validate_certs:
    description: Validate TLS certificates of https:// URLs.
    type: bool
    default: true
  fail_on_problem:
    description:
      - Fail the task when any target fails (the caller usually reads RV(by_host) instead).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Read-only; it runs the same in check mode.
notes:
  - Redirects are followed; proxies from the environment are used.
seealso:
  - module: opsbook.runbooks.http_check
"""

EXAMPLES = r"""
- name: Health-gate the hosts of this batch (once, from the controller)
  http_gate:
    targets: >-
      {{ dict(ansible_play_batch
              | zip(ansible_play_batch | map('extract', hostvars, 'app_base_url')))
         | dict2items(key_name='name', value_name='base_url') }}
  delegate_to: localhost
  run_once: true
  register: gate

- name: Gate two hosts on version 2.0.0
  http_gate:
    targets:
      - {name: app1, base_url: "http://10.0.0.11:8080", version: 2.0.0}
      - {name: app2, base_url: "http://10.0.0.12:8080", version: 2.0.0}
    retries: 10
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
ok:
  description: True when every target passed.
  returned: always
  type: bool
by_host:
  description: "Per target name: C(ok), C(problems) (readable sentences, prefixed with the
    path), C(status), C(latency_ms), C(version) (what the app reported), C(attempts)."
  returned: always
  type: dict
  sample: {"app1": {"ok": false, "problems": ["/api/version: version is 1.0.0, expected 2.0.0"],
           "status": 200, "latency_ms": 3.1, "version": "1.0.0", "attempts": 21}}
failed_targets:
  description: Names of the targets that did not pass.
  returned: always
  type: list
  elements: str
seconds:
  description: Wall time of the whole gate.
  returned: always
  type: float
msg:
  description: One line saying how many targets passed, and the problems of each one that failed.
  returned: always
  type: str
"""

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_http import (
    run_check,
    validate_params,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module

MAX_THREADS = 32


def argument_spec() -> dict[str, Any]:
    return {
        "targets": {
            "type": "list",
            "elements": "dict",
            "required": True,
            "options": {
                "name": {"type": "str", "required": True},
                "base_url": {"type": "str", "required": True},
                "version": {"type": "str", "default": ""},
                "headers": {"type": "dict", "default": {}},
            },
        },
        "health_path": {"type": "str", "default": "/health"},
        "version_path": {"type": "str", "default": "/api/version"},
        "version_key": {"type": "str", "default": "version", "no_log": False},  # a JSON key's name
        "retries": {"type": "int", "default": 20},
        "retry_delay_s": {"type": "float", "default": 0.5},
        "timeout_s": {"type": "float", "default": 5.0},
        "latency_threshold_ms": {"type": "float"},
        "validate_certs": {"type": "bool", "default": True},
        "fail_on_problem": {"type": "bool", "default": False},
    }


def check_params(params: dict[str, Any], url: str, **extra: Any) -> dict[str, Any]:
    """The http_check parameters of one request of the gate."""
    return {
        "url": url,
        "timeout_s": params["timeout_s"],
        "expect_status": [200],
        "latency_threshold_ms": extra.get("latency_threshold_ms"),
        "parse_json": bool(extra.get("expect_json")),
        "expect_json_keys": [],
        "expect_json": extra.get("expect_json") or {},
        "headers": {str(k): str(v) for k, v in (extra.get("headers") or {}).items()},
        "validate_certs": params["validate_certs"],
        "use_proxy": True,
        "max_body_bytes": 65536,
        "retries": params["retries"],
        "retry_delay_s": params["retry_delay_s"],
    }


def input_errors(params: dict[str, Any]) -> list[str]:
    errors = []
    names = [t["name"] for t in params["targets"]]
    if not names:
        errors.append("targets must name at least one host")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        errors.append("targets name these hosts twice: " + ", ".join(duplicates))
    for target in params["targets"]:
        probe = check_params(params, target["base_url"].rstrip("/") + params["health_path"])
        errors += [f"{target['name']}: {e}" for e in validate_params(probe)]
    return errors


def gate_one(
    params: dict[str, Any], target: dict[str, Any], run: Any = run_check
) -> dict[str, Any]:
    """Both checks of one target (the version only once the health path passes)."""
    base = target["base_url"].rstrip("/")
    health = run(
        check_params(params, base + params["health_path"], headers=target.get("headers"),
                     latency_threshold_ms=params.get("latency_threshold_ms"))
    )  # fmt: skip
    problems = [f"{params['health_path']}: {p}" for p in health["problems"]]
    result: dict[str, Any] = {
        "status": health["status"],
        "latency_ms": health["latency_ms"],
        "attempts": health["attempts"],
        "version": None,
    }
    if not problems and target.get("version"):
        version = run(
            check_params(params, base + params["version_path"], headers=target.get("headers"),
                         expect_json={params["version_key"]: target["version"]})
        )  # fmt: skip
        problems += [f"{params['version_path']}: {p}" for p in version["problems"]]
        result["attempts"] += version["attempts"]
        body = version.get("json")
        if isinstance(body, dict):
            result["version"] = body.get(params["version_key"])
    result["ok"] = not problems
    result["problems"] = problems
    return result


def run_gate(params: dict[str, Any], run: Any = run_check) -> dict[str, Any]:
    started = time.monotonic()
    targets = params["targets"]
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, max(1, len(targets)))) as pool:
        done = list(pool.map(lambda t: gate_one(params, t, run), targets))
    results = {t["name"]: r for t, r in zip(targets, done, strict=True)}
    failed = [name for name, r in results.items() if not r["ok"]]
    return {
        "changed": False,
        "ok": not failed,
        "by_host": results,
        "failed_targets": failed,
        "seconds": round(time.monotonic() - started, 3),
        "msg": f"{len(targets) - len(failed)} of {len(targets)} host(s) passed the health gate"
        + "".join(f"; {name}: {'; '.join(results[name]['problems'])}" for name in failed),
    }


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters (read-only: the same in check mode); the
    result, with ``failed`` on invalid input or, with fail_on_problem, a failed target. main()
    runs it in a module process; on the controller the action plugin
    (action_plugins/http_gate.py) runs it in the task's worker."""
    del check_mode
    errors = input_errors(params)
    if errors:
        msg = "http_gate: invalid input: " + "; ".join(errors)
        return {"failed": True, "changed": False, "msg": msg}
    result = run_gate(params)
    if params["fail_on_problem"] and not result["ok"]:
        result["failed"] = True
    return result


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
