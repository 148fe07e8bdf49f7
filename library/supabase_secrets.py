#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""supabase_secrets: a Supabase project's secrets (the Edge Functions' environment) - list,
set, remove - idempotent, compared by the digest Supabase lists (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: supabase_secrets
short_description: List, set and remove a Supabase project's secrets
description:
  - A Supabase project's secrets are the environment of its Edge Functions. The Management API
    (C(https://api.supabase.com)) lists them (C(GET /v1/projects/{ref}/secrets)), creates or
    replaces several in one call (C(POST), a list of names and values) and deletes several in
    one call (C(DELETE), a list of names). There is no call for one secret.
  - The module lists the secrets first, then sends one C(POST) with every secret of
    O(secrets) that is missing or holds another value, and one C(DELETE) with every secret
    marked C(absent) that exists. A second run with the same input sends no change
    (C(changed=false)). With an empty O(secrets) it only lists (RV(secrets)).
  - B(What can be compared, and what cannot.) Supabase never returns a secret's value - the
    list gives the hex SHA-256 digest of it (the C(DIGEST) column of C(supabase secrets list);
    Supabase's Terraform provider compares the same digest). A secret is unchanged when the
    digest of the wanted value equals the listed one. When the listed field is not such a
    digest (should the API change), the value cannot be compared - the secret is written
    again, reported changed and named in RV(uncomparable) with a warning; writing the same
    value is harmless. Whether running Edge Functions already see a new value is not
    something the API tells.
  - Names starting with C(SUPABASE_) are Supabase's own (C(SUPABASE_URL), ...) - listed, never
    set or removed; they are refused as input. Other secrets of the project that O(secrets)
    does not name are left as they are.
  - 429 and 5xx answers, timeouts and refused connections are retried with backoff
    (C(Retry-After) honoured) until O(deadline_s); the C(POST) too, since sending the same
    names and values again sets the same secrets.
version_added: "0.4.0"
author:
  - opsbook maintainers (@opsbook)
# timeouts, retries; action
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_rest
  - opsbook.runbooks.opsbook_controller
options:
  project_ref:
    description:
      - The project's ref (20 lowercase letters - the inventory's C(supabase_project_ref)).
    type: str
    required: true
  token:
    description:
      - A Supabase personal access token (C(sbp_...)) or OAuth token with the C(secrets)
        scopes; sent as C(Authorization Bearer) only. When not given, the controller's
        environment variable C(SUPABASE_ACCESS_TOKEN) is used (an AWX credential can set it) -
        not a task's C(environment), which C(-vvvv) prints.
    type: str
    required: true
  secrets:
    description:
      - The secrets to set or remove. Empty - only list.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description:
          - The secret's name (up to 256 characters, not starting with C(SUPABASE_)).
        type: str
        required: true
      value:
        description:
          - Its value (up to 24576 characters), required with O(secrets[].state=present).
        type: str
      state:
        description:
          - C(present) - the secret holds O(secrets[].value); C(absent) - there is no such
            secret.
        type: str
        choices: [present, absent]
        default: present
  base_url:
    description:
      - The Management API (a stand-in's URL in tests; the inventory's C(supabase_api_url)).
    type: str
    default: https://api.supabase.com
attributes:
  check_mode:
    support: full
    description: The secrets are listed (a read); nothing is created or deleted. C(changed),
      RV(created), RV(updated), RV(deleted) and the diff say what a run would do.
  diff_mode:
    support: full
    description: The secrets the task names, before and after, values shown as C(********)
      (a changed value as C(******** (new value))); secrets it does not name are left out.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller (C(delegate_to) C(localhost)).
notes:
  - Values and the token never appear in a message, a diff or a result; a secret is shown by
    its fingerprint only (C(sha256:) and 12 hex digits of its digest, opsbook's rule).
  - Secrets reach the Edge Functions without a redeploy, as Supabase's docs say of
    C(supabase secrets set); the module does not check that they did.
seealso:
  - name: Supabase Management API - secrets
    description: List, bulk create and bulk delete a project's secrets.
    link: https://supabase.com/docs/reference/api/v1-list-all-secrets
  - name: Edge Functions environment variables
    description: How functions read the secrets.
    link: https://supabase.com/docs/guides/functions/secrets
"""

EXAMPLES = r"""
- name: Set the functions' secrets, remove an old one
  supabase_secrets:
    project_ref: "{{ supabase_project_ref }}"
    token: "{{ supabase_access_token }}"
    secrets:
      - name: STRIPE_WEBHOOK_SECRET
        value: "{{ vault_stripe_webhook_secret }}"
      - name: OLD_API_KEY
        state: absent
  delegate_to: localhost
  no_log: true  # the task's arguments hold values

- name: List them (names and fingerprints)
  supabase_secrets:
    project_ref: "{{ supabase_project_ref }}"
    token: "{{ supabase_access_token }}"
  delegate_to: localhost
  register: supabase_listed
"""

RETURN = r"""
changed:
  description: Whether a secret was created, updated or deleted (would be, in check mode).
  returned: always
  type: bool
created:
  description: Names of the secrets created (that did not exist).
  returned: success
  type: list
  elements: str
  sample: [STRIPE_WEBHOOK_SECRET]
updated:
  description: Names of the secrets that held another value (or one that could not be
    compared) and were set.
  returned: success
  type: list
  elements: str
deleted:
  description: Names of the secrets deleted.
  returned: success
  type: list
  elements: str
  sample: [OLD_API_KEY]
unchanged:
  description: Names the task gave that needed nothing (the same value; or absent already).
  returned: success
  type: list
  elements: str
uncomparable:
  description: Names whose listed value was not a SHA-256 digest, so their value could not be
    compared; they were written again (in RV(updated)).
  returned: success
  type: list
  elements: str
secrets:
  description: The project's secrets after the task (the listing made before it, with the
    task's changes applied; in check mode, the listing as it is) - name, fingerprint of the
    value (null when unknown), updated_at (null for a secret the task wrote). Reserved
    C(SUPABASE_*) secrets included.
  returned: success
  type: list
  elements: dict
  sample: [{name: STRIPE_WEBHOOK_SECRET, fingerprint: "sha256:3f2a9c01be77", updated_at: null}]
names:
  description: The names in RV(secrets).
  returned: success
  type: list
  elements: str
api_calls:
  description: Every attempt sent, as C(METHOD /path STATUS) (null - no answer).
  returned: always
  type: list
  elements: str
  sample: [GET /v1/projects/abcdefghijklmnopqrst/secrets 200,
           POST /v1/projects/abcdefghijklmnopqrst/secrets 201]
diff:
  description: The secrets the task names, before and after, values masked.
  returned: when diff mode is on
  type: dict
msg:
  description: What was done, or what failed and what was left unchanged.
  returned: always
  type: str
"""

from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import (
    invalid_input,
    item_options,
    open_client,
    refused_before_acting,
    with_calls,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import (
    MASK,
    RestClient,
    RestError,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_supabase import (
    SecretPlan,
    create_secrets,
    delete_secrets,
    list_secrets,
    plan_secrets,
    refused_hint,
    secret_errors,
    supabase_argument_spec,
    supabase_option_errors,
    value_digest,
)

NAME = "supabase_secrets"
CHANGED_VALUE = f"{MASK} (new value)"


def argument_spec() -> dict[str, dict[str, Any]]:
    return supabase_argument_spec(
        secrets={
            "type": "list",
            "elements": "dict",
            "default": [],
            "no_log": False,  # the names are not secret; each value is (no_log in item_options)
            "options": item_options("name"),
        }
    )


def validate_params(params: dict[str, Any]) -> list[str]:
    return supabase_option_errors(params) + secret_errors(params.get("secrets") or [])


def diff_of(plan: SecretPlan, names: list[str], present: set[str]) -> dict[str, Any]:
    """Before and after for the names the task gives, values masked."""
    before = {n: MASK for n in names if n in present}
    after = dict(before)
    for entry in plan.create:
        after[entry["name"]] = MASK
    for entry in plan.update:
        after[entry["name"]] = CHANGED_VALUE
    for name in plan.delete:
        after.pop(name, None)
    return {"before": before, "after": after}


def after_listing(listed: dict[str, Any], plan: SecretPlan, done: bool) -> list[dict[str, Any]]:
    """The project's secrets after the plan (``done``) or before it."""
    rows = {name: secret.public() for name, secret in listed.items()}
    if done:
        for entry in plan.writes:
            digest = value_digest(entry["value"])
            rows[entry["name"]] = {
                "name": entry["name"],
                "fingerprint": "sha256:" + digest[:12],
                "updated_at": None,  # Supabase's answer (201) says nothing more
            }
        for name in plan.delete:
            rows.pop(name, None)
    return [rows[name] for name in sorted(rows)]


def summary(plan: SecretPlan, check_mode: bool) -> str:
    parts = []
    for verb, names in (
        ("created", [e["name"] for e in plan.create]),
        ("updated", [e["name"] for e in plan.update]),
        ("deleted", plan.delete),
    ):
        if names:
            parts.append(f"{verb} {', '.join(names)}")
    if not parts:
        return "every secret named is as asked: nothing changed"
    text = "; ".join(parts)
    return f"check mode: would have {text}" if check_mode else text


def apply(params: dict[str, Any], check_mode: bool, client: RestClient) -> dict[str, Any]:
    ref = params["project_ref"]
    wanted = params.get("secrets") or []
    for item in wanted:
        client.add_secret(item.get("value"))
    listed = list_secrets(client, ref)
    plan = plan_secrets(wanted, listed)
    names = [item["name"] for item in wanted]
    result: dict[str, Any] = {
        "changed": plan.changed,
        "created": [e["name"] for e in plan.create],
        "updated": [e["name"] for e in plan.update],
        "deleted": list(plan.delete),
        "unchanged": list(plan.unchanged),
        "uncomparable": list(plan.uncomparable),
        "diff": diff_of(plan, names, set(listed)),
        "msg": summary(plan, check_mode),
    }
    if plan.uncomparable:
        result["warnings"] = [
            f"{NAME}: Supabase listed {', '.join(plan.uncomparable)} without a SHA-256 digest "
            "of the value: it cannot be compared, so it is written again"
        ]
    done_writes = False
    if not check_mode and plan.changed:
        try:
            create_secrets(client, ref, plan.writes)
            done_writes = bool(plan.writes)
            delete_secrets(client, ref, plan.delete)
        except RestError as exc:
            refused = refused_before_acting(exc)
            written = ", ".join(e["name"] for e in plan.writes)
            if not done_writes:
                what = (
                    "nothing was changed"
                    if refused
                    else f"whether Supabase set {written} is unknown (a rerun finds out)"
                )
            else:
                gone = ", ".join(plan.delete)
                what = f"{written} were set; {gone} " + (
                    "were not deleted"
                    if refused
                    else "may or may not be deleted (a rerun finds out)"
                )
            result.update(
                failed=True,
                changed=done_writes or not refused,
                msg=f"{NAME}: {client.scrub(str(exc))}{refused_hint(exc)}; {what}",
            )
            return result
    result["secrets"] = after_listing(listed, plan, done=not check_mode)
    result["names"] = [row["name"] for row in result["secrets"]]
    return result


def execute(params: dict[str, Any], check_mode: bool, **client_kw: Any) -> dict[str, Any]:
    """The module's work on validated parameters (main() runs it; tests call it with a
    ``clock`` and a ``sleep`` for the client)."""
    errors = validate_params(params)
    if errors:
        return invalid_input(NAME, errors)
    client = open_client(params, **client_kw)
    try:
        result = apply(params, check_mode, client)
    except RestError as exc:  # the listing failed: nothing was sent that changes anything
        result = {
            "failed": True,
            "changed": False,
            "msg": f"{NAME}: {client.scrub(str(exc))}{refused_hint(exc)}; nothing was changed",
        }
    return with_calls(result, client)


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
