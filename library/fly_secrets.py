#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""fly_secrets: a Fly.io app's secrets, set or unset one at a time (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: fly_secrets
short_description: Set or unset a Fly.io app's secrets through the Machines API
description:
  - Reads the app's secrets once (C(GET /apps/{app}/secrets) - names and digests, never
    values), then sets each one asked for with C(POST /apps/{app}/secrets/{name})
    (O(state=present)) or deletes it with C(DELETE /apps/{app}/secrets/{name})
    (O(state=absent), only when it exists). The app's other secrets are never touched.
  - B(Fly's API never returns a secret's value) - "The API servers can only encrypt; they
    cannot decrypt secret values" (Fly's docs). What it gives is a C(digest) of the value.
    So whether an existing secret already holds O(value) B(cannot be known before writing) -
    with O(update=always) (the default) the value is written again and the digest Fly
    returns is compared with the one it had - C(changed) is true only when it moved, so a
    rerun with the same values reports no change (the write itself is repeated, and Fly
    counts a new secrets version). With O(update=on_create) an existing secret is left alone
    without a write (its value is not compared). In check mode an existing secret with
    O(update=always) is reported as a possible change.
  - B(A change reaches the app only when its machines boot again) - Fly injects secrets
    "into your Machine as environment variables at boot time". Follow a change with
    M(opsbook.runbooks.fly_machines) C(action=update min_secrets_version=<RV(version)>) (what the
    C(platform_fly) role's C(env) and C(maintenance) entry points do); a machine restart
    does not load new secrets.
version_added: "0.4.0"
author:
  - opsbook maintainers (@opsbook)
# timeouts, retries; action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_rest
  - opsbook.runbooks.opsbook_controller
options:
  app:
    description:
      - The Fly app, the inventory's C(fly_app).
    type: str
    required: true
  name:
    description:
      - One secret's name (an environment variable name). Give O(name) (with O(value) and
        O(state)) or O(secrets).
    type: str
  value:
    description:
      - The value O(name) must have, with O(state=present).
    type: str
  state:
    description:
      - C(present) - O(name) is set to O(value); C(absent) - the app has no secret O(name).
    type: str
    choices: [present, absent]
    default: present
  secrets:
    description:
      - Several secrets at once (still one call per secret written), instead of O(name).
    type: list
    elements: dict
    suboptions:
      name:
        description: The secret's name.
        type: str
        required: true
      value:
        description: Its value (with O(secrets[].state=present)).
        type: str
      state:
        description: C(present) or C(absent).
        type: str
        choices: [present, absent]
        default: present
  update:
    description:
      - C(always) - write the value of a secret that exists (see above - C(changed) compares
        the digests before and after).
      - C(on_create) - only create missing secrets; an existing one is kept as it is.
    type: str
    choices: [always, on_create]
    default: always
  token:
    description:
      - A Fly.io API token (HTTP Bearer), the inventory's C(fly_api_token). Taken from the
        environment variable C(FLY_API_TOKEN) when not given.
    type: str
    required: true
  base_url:
    description:
      - The Machines API, the inventory's C(fly_api_url) (a stand-in's URL in tests).
    type: str
    default: https://api.machines.dev/v1
attributes:
  check_mode:
    support: full
    description: Only the list is read. A missing secret is reported as a change, an
      existing one as a possible change with O(update=always) (its value cannot be read),
      as unchanged with O(update=on_create); C(absent) is exact.
  diff_mode:
    support: full
    description: The secrets before and after by name, every value shown as C(********).
notes:
  - Values never appear in a result, a message or a diff; Fly's own error text is quoted with
    every known value and the token masked. The digests are not returned either.
  - 429 and 5xx answers, timeouts and refused connections are retried with backoff
    (C(Retry-After) honoured) until O(deadline_s); setting or deleting one secret is safe to
    repeat.
seealso:
  - module: opsbook.runbooks.fly_machines
  - name: Fly.io - secrets and Fly Apps
    description: How secrets reach the machines (at boot).
    link: https://fly.io/docs/apps/secrets/
  - name: Fly.io Machines API
    description: The API and its authentication.
    link: https://fly.io/docs/machines/api/working-with-machines-api/
"""

EXAMPLES = r"""
- name: Switch maintenance mode on (the machines read it when they boot again)
  fly_secrets:
    app: "{{ fly_app }}"
    token: "{{ fly_api_token }}"
    name: MAINTENANCE_MODE
    value: "true"
  delegate_to: localhost
  register: fly_maintenance_secret

- name: Boot every machine with at least that secrets version
  fly_machines:
    app: "{{ fly_app }}"
    token: "{{ fly_api_token }}"
    action: update
    min_secrets_version: "{{ fly_maintenance_secret.version }}"
  delegate_to: localhost
  when: fly_maintenance_secret is changed

- name: Set two secrets, unset a third
  fly_secrets:
    app: "{{ fly_app }}"
    token: "{{ fly_api_token }}"
    secrets:
      - {name: SMTP_PASSWORD, value: "{{ vault_smtp_password }}"}
      - {name: STRIPE_KEY, value: "{{ vault_stripe_key }}"}
      - {name: OLD_FLAG, state: absent}
  delegate_to: localhost
  no_log: true
"""

RETURN = r"""
changed_names:
  description: The secrets written or deleted whose value changed (with O(update=always), a
    rewrite that left the digest as it was is not listed).
  returned: always
  type: list
  elements: str
  sample: [MAINTENANCE_MODE]
secrets:
  description: "Per name: C(state) asked, C(changed), C(existed) (before the task), C(known)
    (false when whether the value changes could not be known: check mode, an existing secret)."
  returned: always
  type: dict
  sample: {"MAINTENANCE_MODE": {"state": "present", "changed": true, "existed": false,
           "known": true}}
version:
  description: The app's secrets version after the last write (for
    M(opsbook.runbooks.fly_machines)'s
    O(opsbook.runbooks.fly_machines#module:min_secrets_version)); null when nothing was written.
  returned: always
  type: int
  sample: 7
api_calls:
  description: Every attempt sent, as C(METHOD /path STATUS) (null - no answer).
  returned: always
  type: list
  elements: str
  sample: [GET /apps/my-app/secrets 200, POST /apps/my-app/secrets/MAINTENANCE_MODE 201]
diff:
  description: The secrets before and after by name, values as C(********).
  returned: when changed
  type: dict
msg:
  description: What was done, or what failed and what was left unchanged.
  returned: always
  type: str
"""

from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_fly import (
    FLY_API,
    SECRET_NAME_RE,
    TOKEN_ENV,
    auth_hint,
    delete_secret,
    list_secrets,
    set_secret,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import (
    api_errors,
    api_options,
    both_given_errors,
    invalid_input,
    items_errors,
    left_after,
    masked_diff,
    one_or_many_options,
    open_client,
    wanted_items,
    with_calls,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    RestClient,
    RestError,
    rest_option_errors,
)

NAME = "fly_secrets"
RULES: dict[str, Any] = {
    "mutually_exclusive": [["name", "secrets"]],
    "required_one_of": [["name", "secrets"]],
}


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "app": {"type": "str", "required": True},
        **one_or_many_options("name", "secrets"),
        "update": {"type": "str", "choices": ["always", "on_create"], "default": "always"},
        **api_options(TOKEN_ENV, FLY_API),
    }


def wanted_secrets(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The secrets asked for, as [{name, value, state}]."""
    return wanted_items(params, "name", "secrets")


def validate_params(params: dict[str, Any]) -> list[str]:
    """Input errors, one sentence each (never a value)."""
    errors = api_errors(params, TOKEN_ENV, "app")
    errors += both_given_errors(params, "name", "secrets")
    errors += items_errors(wanted_secrets(params), "name", "secrets", name_problem)
    return errors + rest_option_errors(params)


def name_problem(name: str | None) -> str:
    if SECRET_NAME_RE.match(name or ""):
        return ""
    return (
        f"{name!r} is not a secret name (letters, digits and _, "
        "not starting with a digit: it becomes an environment variable)"
    )


def execute(params: dict[str, Any], check_mode: bool, **client_kw: Any) -> dict[str, Any]:
    """The module's work on validated parameters (``client_kw``: a test's clock and sleep)."""
    errors = validate_params(params)
    if errors:
        return invalid_input(NAME, errors, changed_names=[], secrets={}, version=None)
    wanted = wanted_secrets(params)
    client = open_client(params, secrets=[s.get("value") or "" for s in wanted], **client_kw)
    done: list[str] = []
    try:
        result = apply(client, params["app"], wanted, params["update"], check_mode, done)
    except RestError as exc:
        left = f"already written: {', '.join(done)}; the others were left as they were"
        result = {
            "failed": True,
            "changed": bool(done),
            "changed_names": done,
            "secrets": {},
            "version": None,
            "msg": f"{NAME}: {client.scrub(str(exc))}{auth_hint(exc)}; "
            + left_after(exc, left if done else ""),
        }
    return with_calls(result, client)


def apply(
    client: RestClient,
    app: str,
    wanted: list[dict[str, Any]],
    update: str,
    check_mode: bool,
    done: list[str],
) -> dict[str, Any]:
    """Read the names, write what may differ; ``done`` collects the names written so far."""
    existing = list_secrets(client, app)
    report: dict[str, dict[str, Any]] = {}
    changed: list[str] = []
    version: int | None = None
    for secret in wanted:
        name, present = secret["name"], secret.get("state", "present") == "present"
        existed = name in existing
        entry = {"state": "present" if present else "absent", "existed": existed, "known": True}
        if not present:
            entry["changed"] = existed
            if existed and not check_mode:
                version = _version(delete_secret(client, app, name), version)
                done.append(name)
        elif existed and update == "on_create":
            entry["changed"] = False
        elif check_mode:
            entry.update(changed=True, known=not existed)
        else:
            answer = set_secret(client, app, name, secret["value"])
            done.append(name)
            version = _version(answer, version)
            before, after = existing.get(name, {}).get("digest"), answer.get("digest")
            entry["changed"] = not existed or not before or not after or before != after
        report[name] = entry
        if entry["changed"]:
            changed.append(name)
    result: dict[str, Any] = {
        "changed": bool(changed),
        "changed_names": changed,
        "secrets": report,
        "version": version,
        "msg": _message(app, wanted, report, changed, check_mode),
    }
    if changed:
        result["diff"] = secrets_diff(report)
    return result


def _version(answer: dict[str, Any], current: int | None) -> int | None:
    value = answer.get("version", answer.get("Version"))
    if isinstance(value, int) and (current is None or value > current):
        return value
    return current


def secrets_diff(report: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Secrets by name, every value masked: a set secret shows ``********`` (``********
    (changed)`` after the task when its value changed, ``******** (may change)`` when that
    cannot be known); an unset one is missing."""
    return masked_diff(
        [name for name, entry in report.items() if entry["existed"]],
        {
            name: "may change"
            if not entry["known"]
            else "changed"
            if entry["existed"] and entry["changed"]
            else ""
            for name, entry in report.items()
            if entry["state"] == "present"
        },
    )


def _message(
    app: str,
    wanted: list[dict[str, Any]],
    report: dict[str, dict[str, Any]],
    changed: list[str],
    check_mode: bool,
) -> str:
    if not changed:
        kept = [n for n, e in report.items() if e["existed"] and e["state"] == "present"]
        text = f"{app}: {len(wanted)} secret(s) already as asked: nothing changed"
        return text + (f" ({', '.join(kept)}: digest unchanged or kept)" if kept else "")
    unknown = [n for n, e in report.items() if not e["known"]]
    verb = "would change" if check_mode else "changed"
    text = f"{app}: {verb} {', '.join(changed)}"
    if unknown:
        text += (
            f" ({', '.join(unknown)} exist: Fly's API cannot return a value, so whether "
            "they change is known only by writing them)"
        )
    return text + "; the machines read secrets when they boot again (fly_machines action=update)"


def main() -> None:
    run_module(argument_spec(), execute, **RULES)


if __name__ == "__main__":
    main()
