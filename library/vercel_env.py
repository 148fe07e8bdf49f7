#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""vercel_env: a Vercel project's environment variables, per target (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vercel_env
short_description: Set or delete a Vercel project's environment variables on given targets
description:
  - The project's variables are read once (C(GET /v10/projects/{idOrName}/env), values asked
    decrypted, C(pagination.next) followed), compared with what is asked, and only what differs
    is written - C(POST /v10/projects/{idOrName}/env?upsert=true) to create, C(PATCH
    /v9/projects/{idOrName}/env/{id}) to change, C(DELETE /v9/projects/{idOrName}/env/{id}) to
    remove. Other variables are never touched.
  - A key exists once per target (C(production), C(preview), C(development)) and one entry may
    cover several. O(state=present) makes the key hold the value on exactly O(targets) - an
    entry on exactly those targets is edited in place; entries overlapping them otherwise give
    those targets up (edited to their other targets, or deleted when none remain) and one entry
    is created. O(state=absent) removes the key from O(targets) only. Entries restricted to a
    Git branch are left alone.
  - B(Comparing values Vercel will not show.) Plain values and values Vercel decrypts are
    compared as they are. A C(sensitive) value is never shown again (and Vercel may stop
    decrypting C(encrypted) ones - the C(decrypt) parameter is deprecated), so every value this
    module writes carries its fingerprint (C(sha256:) and 12 hex digits, the rule of every
    opsbook report) in the variable's C(comment) - a rerun compares fingerprints and changes
    nothing. A variable that cannot be read and was not written by this module is written once
    (RV(notes) says so); any comment it had is replaced.
  - B(A change is not seen by the running app until the next deployment) - Vercel reads the
    variables when it builds. Follow a change with M(opsbook.runbooks.vercel_deployment)
    C(action=redeploy) of
    the deployment serving production (what the C(platform_vercel) role's C(env) and
    C(maintenance) entry points do).
version_added: "0.4.0"
author:
  - opsbook maintainers (@opsbook)
# timeouts, retries; action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_rest
  - opsbook.runbooks.opsbook_controller
options:
  project:
    description:
      - The Vercel project, by id (C(prj_...)) or name - the inventory's C(vercel_project).
    type: str
    required: true
  team_id:
    description:
      - The team the project belongs to (C(team_...)), the inventory's C(vercel_team_id); sent
        as C(teamId) on every call. Empty - the token's personal account.
    type: str
    default: ""
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
      - C(present) - O(key) holds O(value) on O(targets); C(absent) - O(key) is not set on any
        of O(targets).
    type: str
    choices: [present, absent]
    default: present
  env_vars:
    description:
      - Several variables at once (one list call, then one call per variable that changes),
        instead of O(key).
    type: list
    elements: dict
    suboptions:
      key:
        description: The variable's name.
        type: str
        required: true
        aliases: [name]
      value:
        description: Its value (with O(env_vars[].state=present)).
        type: str
      state:
        description: C(present) or C(absent).
        type: str
        choices: [present, absent]
        default: present
  targets:
    description:
      - The environments the variables are set on (or removed from).
    type: list
    elements: str
    choices: [production, preview, development]
    default: [production, preview, development]
  type:
    description:
      - The type of variables created or changed - C(encrypted) (Vercel's default),
        C(sensitive) (never readable again, production and preview only) or C(plain).
    type: str
    choices: [encrypted, plain, sensitive]
    default: encrypted
  token:
    description:
      - A Vercel access token (HTTP Bearer), the inventory's C(vercel_token). Taken from the
        environment variable C(VERCEL_TOKEN) when not given.
    type: str
    required: true
  base_url:
    description:
      - Vercel's API, the inventory's C(vercel_api_url) (a stand-in's URL in tests).
    type: str
    default: https://api.vercel.com
attributes:
  check_mode:
    support: full
    description: Only the list is read; C(changed), RV(changed_keys) and RV(changes) say what a
      run would do.
  diff_mode:
    support: full
    description: The variables asked for before and after - targets and type, every value shown
      as C(********); RV(changed_keys) names those whose value changes.
notes:
  - Values never appear in a result, a message or a diff; Vercel's own error text is quoted with
    the token and every known value masked - except values of type C(plain), which are not
    secret (masking a C(true) would blank every "true" in a message).
  - 429 answers (honouring C(X-RateLimit-Reset)), 5xx answers, timeouts and refused connections
    are retried with backoff until O(deadline_s); an upsert, a PATCH or a DELETE of one entry is
    safe to repeat.
  - Vercel answers an invalid, expired or revoked token with 403 (C(invalidToken)).
seealso:
  - module: opsbook.runbooks.vercel_deployment
  - name: Vercel REST API - create one or more environment variables
    description: POST /v10/projects/{idOrName}/env.
    link: https://vercel.com/docs/rest-api/reference/endpoints/projects/create-one-or-more-environment-variables
  - name: Vercel - environment variables
    description: When a change takes effect (the next deployment).
    link: https://vercel.com/docs/environment-variables
"""

EXAMPLES = r"""
- name: Switch maintenance mode on in production (read by the app after the next deployment)
  vercel_env:
    project: "{{ vercel_project }}"
    team_id: "{{ vercel_team_id | default('') }}"
    token: "{{ vercel_token }}"
    key: MAINTENANCE_MODE
    value: "true"
    type: plain
    targets: [production]
  delegate_to: localhost

- name: Rotate two secrets and drop an old one, on production and preview
  vercel_env:
    project: "{{ vercel_project }}"
    token: "{{ vercel_token }}"
    targets: [production, preview]
    type: sensitive
    env_vars:
      - {key: STRIPE_API_KEY, value: "{{ stripe_key }}"}
      - {key: SESSION_SECRET, value: "{{ session_secret }}"}
      - {key: OLD_API_KEY, state: absent}
  delegate_to: localhost
  no_log: true
"""

RETURN = r"""
changed_keys:
  description: The variables written or removed (in check mode - those that would be).
  returned: always
  type: list
  elements: str
  sample: [MAINTENANCE_MODE]
keys:
  description: Per variable asked for - C(present) or C(absent) after the task, and C(changed).
  returned: always
  type: dict
  sample: {"MAINTENANCE_MODE": {"state": "present", "changed": true}}
changes:
  description: The calls made (or that would be) - C(op) create, edit or delete, C(key), the
    entry's C(id) and C(targets), and C(why) (missing, value, type, targets, absent).
  returned: always
  type: list
  elements: dict
  sample: [{"op": "create", "key": "MAINTENANCE_MODE", "id": "", "targets": [production],
            "why": "missing"}]
notes:
  description: Variables whose value could not be read and was written without comparing.
  returned: always
  type: list
  elements: str
project:
  description: The project as given.
  returned: always
  type: str
api_calls:
  description: Every attempt sent, with its status (null - no answer). The token is never in it.
  returned: always
  type: list
  elements: str
  sample: [GET /v10/projects/app/env 200, POST /v10/projects/app/env 201]
diff:
  description: The variables asked for before and after, values masked.
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
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    MASK,
    RestError,
    rest_option_errors,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_vercel import (
    ENV_TYPES,
    TARGETS,
    TOKEN_ENV,
    VERCEL_API,
    EnvStep,
    VercelApi,
    auth_hint,
    env_view,
    normalize_targets,
    plan_env,
)

NAME = "vercel_env"
RULES: dict[str, Any] = {
    "mutually_exclusive": [["key", "env_vars"]],
    "required_one_of": [["key", "env_vars"]],
}


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "project": {"type": "str", "required": True},
        "team_id": {"type": "str", "default": ""},
        **one_or_many_options("key", "env_vars", aliases=["name"]),
        "targets": {
            "type": "list",
            "elements": "str",
            "choices": list(TARGETS),
            "default": list(TARGETS),
        },
        "type": {"type": "str", "choices": list(ENV_TYPES), "default": "encrypted"},
        **api_options(TOKEN_ENV, VERCEL_API),
    }


def wanted_vars(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The variables asked for, as [{key, value, state}]."""
    return wanted_items(params, "key", "env_vars")


def validate_params(params: dict[str, Any]) -> list[str]:
    """Input errors, one sentence each (never a value)."""
    errors = api_errors(params, TOKEN_ENV, "project")
    errors += both_given_errors(params, "key", "env_vars")
    if not params.get("targets"):
        errors.append("targets is empty")
    if params.get("type") == "sensitive" and "development" in (params.get("targets") or []):
        errors.append("type sensitive cannot be set on the development target (Vercel's rule)")
    errors += items_errors(wanted_vars(params), "key", "env_vars")
    return errors + rest_option_errors(params)


def execute(params: dict[str, Any], check_mode: bool, **client_kw: Any) -> dict[str, Any]:
    """The module's work on validated parameters (``client_kw``: a test's clock and sleep)."""
    errors = validate_params(params)
    if errors:
        return invalid_input(
            NAME, errors, changed_keys=[], keys={}, changes=[], notes=[],
            project=params.get("project") or "",
        )  # fmt: skip
    wanted = wanted_vars(params)
    client = open_client(
        params,
        # plain values are not secret (and "true" masked in every message helps no one)
        secrets=[v.get("value") or "" for v in wanted] if params["type"] != "plain" else [],
        **client_kw,
    )
    api = VercelApi(client, params.get("team_id") or "")
    done: list[str] = []
    try:
        result = apply(api, params, wanted, check_mode, done)
    except RestError as exc:
        changed = ", ".join(sorted(set(done)))
        left = f"already changed: {changed}; the rest was left as it was" if done else ""
        result = {
            "failed": True,
            "changed": bool(done),
            "changed_keys": sorted(set(done)),
            "keys": {},
            "changes": [],
            "notes": [],
            "msg": f"{NAME}: {client.scrub(str(exc))}{auth_hint(exc)}; {left_after(exc, left)}",
        }
    result["project"] = params["project"]
    return with_calls(result, client)


def apply(
    api: VercelApi,
    params: dict[str, Any],
    wanted: list[dict[str, Any]],
    check_mode: bool,
    done: list[str],
) -> dict[str, Any]:
    """Read once, plan per key, write what differs; ``done`` collects the keys changed so far."""
    project = params["project"]
    targets = normalize_targets(params["targets"])
    entries = api.list_env(project)
    keys: dict[str, dict[str, Any]] = {}
    plans: list[tuple[dict[str, Any], list[EnvStep]]] = []
    notes: list[str] = []
    for var in wanted:
        state = var.get("state") or "present"
        steps, note = plan_env(
            entries, var["key"], state=state, value=var.get("value"),
            env_type=params["type"], targets=targets,
        )  # fmt: skip
        if note:
            notes.append(note)
        keys[var["key"]] = {"state": state, "changed": bool(steps)}
        plans.append((var, steps))
    changes = [
        {
            "op": step.op,
            "key": step.key,
            "id": (step.entry or {}).get("id", ""),
            "targets": targets if step.op == "create" else (step.entry or {}).get("targets", []),
            "why": step.why,
        }
        for _unused, steps in plans
        for step in steps
    ]
    changed_keys = [var["key"] for var, steps in plans if steps]
    if not check_mode:
        for var, steps in plans:
            for step in steps:
                run_step(api, project, step, var, params["type"], targets)
                done.append(step.key)
    verb = "would change" if check_mode else "changed"
    result: dict[str, Any] = {
        "changed": bool(changed_keys),
        "changed_keys": changed_keys,
        "keys": keys,
        "changes": changes,
        "notes": notes,
        "msg": (
            f"{project}: {verb} {', '.join(changed_keys)} on {', '.join(targets)}; "
            f"{len(wanted) - len(changed_keys)} already as asked"
            if changed_keys
            else f"{project}: {len(wanted)} variable(s) already as asked on "
            f"{', '.join(targets)}: nothing changed"
        ),
    }
    if changed_keys:
        result["diff"] = diff(entries, plans, targets, params["type"])
    return result


def run_step(
    api: VercelApi,
    project: str,
    step: EnvStep,
    var: dict[str, Any],
    env_type: str,
    targets: list[str],
) -> None:
    entry = step.entry or {}
    if step.op == "create":
        api.create_env(project, step.key, var["value"], env_type, targets)
    elif step.op == "delete":
        api.delete_env(project, entry["id"])
    else:
        fields = dict(step.fields or {})
        if step.set_value:
            fields["value"] = var["value"]
        api.edit_env(project, entry["id"], secret=env_type != "plain", **fields)


def diff(
    entries: list[dict[str, Any]],
    plans: list[tuple[dict[str, Any], list[EnvStep]]],
    targets: list[str],
    env_type: str,
) -> dict[str, Any]:
    """Before: the keys' entries as listed; after: as the plan leaves them. Values masked; a
    changed value shows ``******** (changed)``."""
    keys = [var["key"] for var, steps in plans if steps]
    before = env_view(entries, keys)
    after: dict[str, Any] = {}
    for var, steps in plans:
        if not steps:
            continue
        rest = []
        for entry in before.get(var["key"], []):
            left = [t for t in entry["targets"] if t not in targets]
            if left:
                rest.append({**entry, "targets": left})
        if (var.get("state") or "present") == "present":
            rest.append({"targets": targets, "type": env_type, "value": f"{MASK} (changed)"
                         if any(s.set_value for s in steps) else MASK})  # fmt: skip
        if rest:
            after[var["key"]] = sorted(rest, key=lambda e: e["targets"])
    return {"before": before, "after": after}


def main() -> None:
    run_module(argument_spec(), execute, **RULES)


if __name__ == "__main__":
    main()
