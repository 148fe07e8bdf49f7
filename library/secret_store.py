#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""secret_store: read and stage a secret in its store of record (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: secret_store
short_description: Read a secret's current, pending and previous values in its store, and move them
description:
  - A secret under rotation has three values - current (what the apps use), pending (the next
    one, stored before any target changes) and previous (still accepted during a grace
    period). This module reads them and moves them in the secret's store of record, the way
    AWS Secrets Manager's staging labels move - O(action=put_pending) stores the pending
    value, O(action=promote) makes it current (and the current one previous),
    O(action=discard_pending) forgets it (a rotation rolled back), O(action=drop_previous)
    forgets the previous one (its grace period is over).
  - "O(store.type=vault) - the inventory's ansible-vault file: O(store.var) is current,
    C(<var>_pending) and C(<var>_previous) the others, top-level variables. The file is edited
    line by line (only those three lines change; every other byte of the plaintext is kept)
    and re-encrypted in memory with the vault secret that decrypted it, under the same header
    (C(1.1), or C(1.2) with its vault id); only ciphertext is ever written, to a temporary file
    renamed over the file (mode and owner kept). A plain YAML file (the local sandbox's) is
    edited the same way. Values that span lines, inline C(!vault) values, tags, anchors and
    values Ansible would read as templates are refused, with what to do."
  - "O(store.type=aws_secretsmanager) - AWS Secrets Manager's staging labels AWSCURRENT,
    AWSPENDING and AWSPREVIOUS, used as AWS defines them. The pending version's id is derived
    from the value's fingerprint (a rerun adds no version); promote moves AWSCURRENT (AWS moves
    AWSPREVIOUS) then removes AWSPENDING."
  - "O(store.type=aws_ssm) - an SSM Parameter Store SecureString parameter: current is the
    version labelled C(current), previous the one labelled C(previous); the pending value lives
    in a sibling SecureString parameter (O(store.pending_parameter)), so the parameter itself
    returns only the current value while one is pending. B(Apps read) C(<parameter>) or
    C(<parameter>:current), and C(<parameter>:previous) during a grace period."
  - Every write reads first and is idempotent (the same call again reports no change), then
    reads again and fails if the store did not end where it should. Results carry
    fingerprints (C(sha256:) and 12 hex digits of the SHA-256 of the value), never values,
    unless O(return_values=true).
  - The AWS stores do not create secrets - a secret or parameter that does not exist, or has
    no current value, fails with the command that creates it. AWS credentials come from
    boto3's usual chain (environment, profile, instance or task role).
version_added: "0.3.0"
author:
  - opsbook maintainers (@opsbook)
# the action attribute
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_controller
options:
  store:
    description:
      - Where the secret lives (the secret's C(secret_store) in the inventory).
    type: dict
    required: true
    suboptions:
      type:
        description:
          - The kind of store.
        type: str
        required: true
        choices: [vault, aws_secretsmanager, aws_ssm]
      file:
        description:
          - O(store.type=vault) - the vault file, e.g.
            C({{ playbook_dir }}/../vault/production.yml) (a relative path is taken from
            the controller's working directory; a symbolic link is followed and its target
            rewritten).
        type: str
      var:
        description:
          - O(store.type=vault) - the variable holding the current value; the pending and
            previous values are C(<var>_pending) and C(<var>_previous).
        type: str
      secret_id:
        description:
          - O(store.type=aws_secretsmanager) - the secret's name or ARN.
        type: str
      json_key:
        description:
          - O(store.type=aws_secretsmanager) - the secret's string is a JSON object (as AWS's
            database secrets are) and the value is this key of it; a pending version is the
            current object with this key replaced.
        type: str
      parameter:
        description:
          - O(store.type=aws_ssm) - the SecureString parameter's name.
        type: str
      pending_parameter:
        description:
          - O(store.type=aws_ssm) - the SecureString parameter that holds the pending value
            while there is one (deleted by promote and discard_pending). Default
            C(/opsbook/pending<parameter>), outside the parameter's own path so that an app
            loading its path never sees it.
        type: str
      kms_key_id:
        description:
          - O(store.type=aws_ssm) - the KMS key both parameters are encrypted with. Default
            - the key of the parameter's latest version.
        type: str
      region:
        description:
          - The AWS region. Default - boto3's (C(AWS_REGION), C(AWS_DEFAULT_REGION), the
            profile).
        type: str
      endpoint_url:
        description:
          - An AWS API endpoint other than AWS's own (a test server, a VPC endpoint URL).
        type: str
  action:
    description:
      - C(read) reads; C(put_pending) stores O(value) as pending; C(promote) makes pending
        current and current previous; C(discard_pending) forgets pending; C(drop_previous)
        forgets previous.
    type: str
    choices: [read, put_pending, promote, discard_pending, drop_previous]
    default: read
  value:
    description:
      - O(action=put_pending) - the new value. The same value already pending changes
        nothing; the current or the previous value is refused.
    type: str
  replace_pending:
    description:
      - O(action=put_pending) - replace another pending value (without it, a different
        pending value fails the task and nothing changes). Ignored by the other actions.
    type: bool
    default: false
  return_values:
    description:
      - "Return the values themselves (RV(values)), for a task that must pass one on. The task
        must set C(no_log: true) - the action plugin refuses it otherwise."
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reads the store and reports what the action would change (RV(fingerprints)
      is what it would leave); writes nothing.
  diff_mode:
    support: full
    description: The diff shows each value's fingerprint before and after, never a value.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller (C(delegate_to) C(localhost)). A vault file that is
      encrypted needs the run's vault secrets, which the action plugin hands to the module on
      the controller's local connection only (no C(environment), no C(async)).
notes:
  - A value written to the vault file is plain YAML when it reads back as the same string,
    else single-quoted; a value holding C({{), C({%) or C({#) is refused (Ansible would
    template it wherever the variable is used).
  - Secrets Manager and SSM keep old values in the secret's history (AWS deletes unlabelled
    Secrets Manager versions in time; SSM keeps 100 versions); retiring a previous value
    for good is done where it is accepted (the database role, the vendor's key).
  - Secrets Manager - a promote interrupted between its two requests reads as pending equal
    to current (both labels on one version); promote again finishes it. SSM - one
    interrupted after writing the new version reads as the old current with the value still
    pending; promote again finishes it without writing a second version.
seealso:
  - name: AWS Secrets Manager staging labels
    description: How AWSCURRENT, AWSPENDING and AWSPREVIOUS move during a rotation.
    link: https://docs.aws.amazon.com/secretsmanager/latest/userguide/rotate-secrets_how.html
  - name: SSM parameter labels
    description: Labels on parameter versions, read as C(name:label).
    link: https://docs.aws.amazon.com/systems-manager/latest/userguide/sysman-paramstore-labels.html
"""

EXAMPLES = r"""
- name: Read the JWT secret's fingerprints from the vault file
  secret_store:
    store:
      type: vault
      file: "{{ opsbook_vault_file }}"  # vault/<env>.yml, named by the inventory
      var: vault_jwt_secret
  delegate_to: localhost
  run_once: true
  register: jwt_store

- name: Store the new value as pending before any host changes
  secret_store:
    store: {type: aws_secretsmanager, secret_id: prod/app/jwt, region: eu-west-1}
    action: put_pending
    value: "{{ new_jwt_secret }}"
  delegate_to: localhost
  run_once: true
  no_log: true

- name: Finish - the pending value becomes current, the current one previous
  secret_store:
    store: {type: aws_ssm, parameter: /app/prod/JWT_SECRET}
    action: promote
  delegate_to: localhost
  run_once: true

- name: Read the values to install them (the task must not log)
  secret_store:
    store: {type: aws_secretsmanager, secret_id: prod/app/db, json_key: password}
    return_values: true
  delegate_to: localhost
  run_once: true
  no_log: true
  register: db_secret
"""

RETURN = r"""
fingerprints:
  description: The fingerprint of each value after the action (in check mode - what it
    would leave); null for a value that is not there.
  returned: always
  type: dict
  sample: {current: "sha256:3f2a9c1d0b7e", pending: null, previous: "sha256:9e1c44ab02d3"}
before:
  description: The fingerprint of each value before the action.
  returned: success
  type: dict
  sample: {current: "sha256:9e1c44ab02d3", pending: "sha256:3f2a9c1d0b7e", previous: null}
meta:
  description: What the store knows of each value (C(current), C(pending), C(previous)) -
    version id or number, created or updated time (ISO 8601 UTC), labels, the vault file's
    line - and of itself (C(store)). Never a value.
  returned: success
  type: dict
  sample:
    current: {version: opsbook-pending-sha256-3f2a9c1d0b7e, stage: AWSCURRENT,
              created: "2024-05-01T12:00:00Z"}
    pending: {}
    previous: {version: 5c0f7b1e-8a0e-4c55-9d4b-7e0b8d2a1f11, stage: AWSPREVIOUS,
               created: "2024-02-01T09:30:00Z"}
    store: {secret_id: prod/app/jwt, region: eu-west-1}
values:
  description: The values themselves (after the action), with O(return_values=true) only;
    the task must be C(no_log).
  returned: O(return_values=true)
  type: dict
  sample: {current: "...", pending: null, previous: "..."}
store:
  description: The store, in words.
  returned: always
  type: str
  sample: vault file vault/production.yml (vault_jwt_secret)
action:
  description: The action done (or, in check mode, that would be).
  returned: always
  type: str
  sample: promote
msg:
  description: A one-line summary, or what failed and what was left unchanged.
  returned: always
  type: str
  sample: "vault file vault/production.yml (vault_jwt_secret):
    promote done"
"""

from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_secret_store import (
    ACTIONS,
    LABELS,
    STORE_TYPES,
    SecretStoreError,
    open_secret_store,
)

MODULE_ACTIONS = ["read", *ACTIONS]
# Set by the action plugin (never a task argument): the run's vault secrets.
VAULT_SECRETS_PARAM = "_vault_secrets"


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "store": {
            "type": "dict",
            "required": True,
            "options": {
                "type": {"type": "str", "required": True, "choices": list(STORE_TYPES)},
                "file": {"type": "str"},
                "var": {"type": "str"},
                "secret_id": {"type": "str"},
                "json_key": {"type": "str", "no_log": False},  # a key's name, not a secret
                "parameter": {"type": "str"},
                "pending_parameter": {"type": "str"},
                "kms_key_id": {"type": "str"},
                "region": {"type": "str"},
                "endpoint_url": {"type": "str"},
            },
            "required_if": [
                ["type", "vault", ["file", "var"]],
                ["type", "aws_secretsmanager", ["secret_id"]],
                ["type", "aws_ssm", ["parameter"]],
            ],
        },
        "action": {"type": "str", "choices": MODULE_ACTIONS, "default": "read"},
        "value": {"type": "str", "no_log": True},
        "replace_pending": {"type": "bool", "default": False},
        "return_values": {"type": "bool", "default": False},
    }


def validate_params(params: dict[str, Any]) -> list[str]:
    errors = []
    action = params.get("action") or "read"
    if action == "put_pending" and not params.get("value"):
        errors.append("value is required (and not empty) with action=put_pending")
    if action != "put_pending" and params.get("value") is not None:
        errors.append(f"value is only used with action=put_pending, not {action}")
    return errors


def fingerprint_lines(fingerprints: dict[str, str | None]) -> str:
    return "".join(f"{label}: {fingerprints.get(label) or '-'}\n" for label in LABELS)


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters (see run_module and the action plugin)."""
    action = params.get("action") or "read"
    errors = validate_params(params)
    if errors:
        return {
            "failed": True,
            "changed": False,
            "action": action,
            "msg": "secret_store: invalid input: " + "; ".join(errors) + "; nothing was changed",
        }
    store = None
    try:
        store = open_secret_store(
            params["store"], params.get(VAULT_SECRETS_PARAM), check_mode=check_mode
        )
        if action == "read":
            record = store.read()
            fingerprints = record.fingerprints()
            result: dict[str, Any] = {
                "changed": False,
                "before": fingerprints,
                "after": fingerprints,
                "meta": record.meta,
                "msg": f"{store.describe()}: read",
            }
        elif action == "put_pending":
            result = store.put_pending(
                params["value"], replace_pending=bool(params.get("replace_pending"))
            )
        else:
            result = getattr(store, action)()
    except SecretStoreError as exc:
        return {
            "failed": True,
            "changed": False,
            "action": action,
            "store": store.describe() if store is not None else "",
            "msg": f"secret_store: {exc}",
        }
    after = result.pop("after")
    warnings = (result.get("meta") or {}).get("store", {}).get("warnings") or []
    final = {
        **result,
        "action": action,
        "store": store.describe(),
        "fingerprints": after,
        "diff": {
            "before": fingerprint_lines(result["before"]),
            "after": fingerprint_lines(after),
            "before_header": f"{store.describe()} (fingerprints)",
            "after_header": f"{store.describe()} (fingerprints)",
        },
        "warnings": list(warnings),
    }
    if params.get("return_values") and store.last_record is not None:
        final["values"] = store.last_record.values()
    return final


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
