#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""render_env: a Render service's environment variables, one key at a time (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: render_env
short_description: Set or delete a Render service's environment variables, one key at a time
description:
  - Each variable is read (C(GET /services/{serviceId}/env-vars/{envVarKey}), or the list
    C(GET /services/{serviceId}/env-vars) followed cursor by cursor when several are given),
    then written with C(PUT /services/{serviceId}/env-vars/{envVarKey}) (O(state=present),
    only when its value differs) or deleted with C(DELETE
    /services/{serviceId}/env-vars/{envVarKey}) (O(state=absent), only when it exists). The
    service's other variables are never touched.
  - B(Never the bulk) C(PUT /services/{serviceId}/env-vars) - Render's document says it
    "replaces all environment variables for a service with the provided list", so a list
    missing one variable deletes it; it has wiped teams' variables. This module has no code
    that calls it.
  - Render's API returns the values, so a rerun compares them exactly - a second run with the
    same values changes nothing (C(changed=false)).
  - B(A change is not seen by the running app until the next deploy) - Render applies
    environment changes when the service is deployed again (its dashboard offers "Save,
    rebuild, and deploy"; the API only saves). Follow a change with
    M(opsbook.runbooks.render_service)
    C(action=deploy force=true) of the live source (what the C(platform_render) role's C(env)
    and C(maintenance) entry points do).
  - Variables of a linked environment group are not reached by these calls (Render's
    document - they apply to variables set directly on the service).
version_added: "0.4.0"
author:
  - opsbook maintainers (@opsbook)
# timeouts, retries; action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_rest
  - opsbook.runbooks.opsbook_controller
options:
  service_id:
    description:
      - The Render service (C(srv-...)), the inventory's C(render_service_id).
    type: str
    required: true
  key:
    description:
      - One variable's name. Give O(key) (with O(value) and O(state)) or O(env_vars).
    type: str
  value:
    description:
      - The value O(key) must have, with O(state=present).
    type: str
  state:
    description:
      - C(present) - O(key) has O(value); C(absent) - the service has no variable O(key).
    type: str
    choices: [present, absent]
    default: present
  env_vars:
    description:
      - Several variables at once (still one call per variable that changes), instead of
        O(key).
    type: list
    elements: dict
    suboptions:
      key:
        description: The variable's name.
        type: str
        required: true
      value:
        description: Its value (with O(env_vars[].state=present)).
        type: str
      state:
        description: C(present) or C(absent).
        type: str
        choices: [present, absent]
        default: present
  token:
    description:
      - A Render API key (HTTP Bearer), the inventory's C(render_api_key). Taken from the
        environment variable C(RENDER_API_KEY) when not given.
    type: str
    required: true
  base_url:
    description:
      - Render's API, the inventory's C(render_api_url) (a stand-in's URL in tests).
    type: str
    default: https://api.render.com/v1
attributes:
  check_mode:
    support: full
    description: Only the reads are sent; C(changed) and RV(changed_keys) say what a run
      would change.
  diff_mode:
    support: full
    description: The variables before and after by name, every value shown as C(********);
      RV(changed_keys) names those whose value changes.
notes:
  - Values never appear in a result, a message or a diff; Render's own error text is quoted
    with every known value and the token masked.
  - 429 and 5xx answers, timeouts and refused connections are retried with backoff
    (C(Retry-After) honoured) until O(deadline_s); a PUT or DELETE of one key is safe to repeat.
seealso:
  - module: opsbook.runbooks.render_service
  - name: Render API - add or update an environment variable
    description: PUT /services/{serviceId}/env-vars/{envVarKey}.
    link: https://api-docs.render.com/reference/update-env-var
  - name: Render - environment variables
    description: When a change takes effect.
    link: https://render.com/docs/configure-environment-variables
"""

EXAMPLES = r"""
- name: Switch maintenance mode on (read by the app after the next deploy)
  render_env:
    service_id: "{{ render_service_id }}"
    token: "{{ render_api_key }}"
    key: MAINTENANCE_MODE
    value: "true"
  delegate_to: localhost

- name: Rotate two secrets and drop an old one
  render_env:
    service_id: "{{ render_service_id }}"
    token: "{{ render_api_key }}"
    env_vars:
      - {key: STRIPE_API_KEY, value: "{{ stripe_key }}"}
      - {key: SESSION_SECRET, value: "{{ session_secret }}"}
      - {key: OLD_API_KEY, state: absent}
  delegate_to: localhost
  no_log: true
"""

RETURN = r"""
changed_keys:
  description: The variables written or deleted (in check mode - those that would be).
  returned: always
  type: list
  elements: str
  sample: [MAINTENANCE_MODE]
keys:
  description: Per variable asked for - C(present) or C(absent) after the task, and
    C(changed).
  returned: always
  type: dict
  sample: {"MAINTENANCE_MODE": {"state": "present", "changed": true}}
api_calls:
  description: Every attempt sent, with its status (null - no answer). The token is never
    in it.
  returned: always
  type: list
  elements: str
  sample: [GET /v1/services/srv-1/env-vars/MAINTENANCE_MODE 404,
           PUT /v1/services/srv-1/env-vars/MAINTENANCE_MODE 200]
diff:
  description: The variables before and after by name, values masked.
  returned: when changed and in diff mode
  type: dict
msg:
  description: What was done, or what failed and what was left unchanged.
  returned: always
  type: str
"""

from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import (
    api_errors,
    api_options,
    both_given_errors,
    invalid_input,
    items_errors,
    left_after,
    one_or_many_options,
    open_client,
    wanted_items,
    with_calls,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_render import (
    RENDER_API,
    TOKEN_ENV,
    auth_hint,
    delete_env_var,
    env_diff,
    get_env_var,
    list_env_vars,
    put_env_var,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    RestClient,
    RestError,
    rest_option_errors,
)

NAME = "render_env"
RULES: dict[str, Any] = {
    "mutually_exclusive": [["key", "env_vars"]],
    "required_one_of": [["key", "env_vars"]],
}


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "service_id": {"type": "str", "required": True},
        **one_or_many_options("key", "env_vars"),
        **api_options(TOKEN_ENV, RENDER_API),
    }


def wanted_vars(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The variables asked for, as [{key, value, state}]."""
    return wanted_items(params, "key", "env_vars")


def validate_params(params: dict[str, Any]) -> list[str]:
    """Input errors, one sentence each (never a value)."""
    errors = api_errors(params, TOKEN_ENV, "service_id")
    errors += both_given_errors(params, "key", "env_vars")
    errors += items_errors(wanted_vars(params), "key", "env_vars")
    return errors + rest_option_errors(params)


def execute(params: dict[str, Any], check_mode: bool, **client_kw: Any) -> dict[str, Any]:
    """The module's work on validated parameters (``client_kw``: a test's clock and sleep)."""
    errors = validate_params(params)
    if errors:
        return invalid_input(NAME, errors, changed_keys=[], keys={})
    wanted = wanted_vars(params)
    client = open_client(params, secrets=[v.get("value") or "" for v in wanted], **client_kw)
    service = params["service_id"]
    done: list[str] = []
    try:
        result = apply(client, service, wanted, check_mode, done)
    except RestError as exc:
        left = f"already changed: {', '.join(done)}; the others were left as they were"
        result = {
            "failed": True,
            "changed": bool(done),
            "changed_keys": done,
            "keys": {},
            "msg": f"{NAME}: {client.scrub(str(exc))}{auth_hint(exc)}; "
            + left_after(exc, left if done else ""),
        }
    return with_calls(result, client)


def apply(
    client: RestClient,
    service: str,
    wanted: list[dict[str, Any]],
    check_mode: bool,
    done: list[str],
) -> dict[str, Any]:
    """Read, compare, write what differs; ``done`` collects the keys changed so far."""
    if len(wanted) > 1:
        existing = list_env_vars(client, service)
        before = {v["key"]: existing.get(v["key"]) for v in wanted}
    else:
        before = {wanted[0]["key"]: get_env_var(client, service, wanted[0]["key"])}
    after: dict[str, str | None] = {}
    keys: dict[str, dict[str, Any]] = {}
    to_change: list[str] = []
    for var in wanted:
        key, present = var["key"], var.get("state", "present") == "present"
        after[key] = var["value"] if present else None
        differs = (before[key] != var["value"]) if present else before[key] is not None
        keys[key] = {"state": "present" if present else "absent", "changed": differs}
        if differs:
            to_change.append(key)
    if not check_mode:
        for var in wanted:
            key = var["key"]
            if key not in to_change:
                continue
            if after[key] is None:
                delete_env_var(client, service, key)
            else:
                put_env_var(client, service, key, after[key] or "")
            done.append(key)
    verb = "would change" if check_mode else "changed"
    result: dict[str, Any] = {
        "changed": bool(to_change),
        "changed_keys": to_change,
        "keys": keys,
        "msg": (
            f"{service}: {verb} {', '.join(to_change)} (one key at a time); "
            f"{len(wanted) - len(to_change)} already as asked"
            if to_change
            else f"{service}: {len(wanted)} variable(s) already as asked: nothing changed"
        ),
    }
    if to_change:
        result["diff"] = env_diff(before, after)
    return result


def main() -> None:
    run_module(argument_spec(), execute, **RULES)


if __name__ == "__main__":
    main()
