#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""deploy_ledger: the append-only record of deploys per environment (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: deploy_ledger
short_description: Record deploys per environment and ask whether a version succeeded there
description:
  - The deploy ledger lives under the deploy state URL (the inventory's C(opsbook_state_url),
    the same for every environment of one app), one JSON object per event -
    C(<url>/ledger/<env>/<ts>-<release_id>.json) - written once (create-if-absent) and never
    rewritten. A copy under C(<url>/ledger-index/<env>/<version>/) lets a query read only the
    entries of one version.
  - O(state=record) appends an entry - O(version), O(artifact_sha256), O(release_id),
    O(status) (C(succeeded), C(failed) or C(rolled_back)), O(hotfix), O(run_id),
    O(operator), O(reason), O(hosts), O(details). Recording the same O(run_id), O(release_id),
    O(version) and O(status) again changes nothing (idempotent re-runs).
  - O(state=query) with O(version) returns that version's entries in O(env) and
    RV(succeeded) - whether a C(succeeded) entry exists (with O(artifact_sha256), for that very
    artifact). The production staging gate asks it of C(env=staging). Without O(version) it
    returns the O(limit) newest entries of the environment.
version_added: "0.2.0"
author:
  - opsbook maintainers (@opsbook)
# S3 options, action attribute
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_s3
  - opsbook.runbooks.opsbook_controller
options:
  url:
    description:
      - Where the deploy state lives, C(s3://bucket/prefix) or C(file:///absolute/path).
    type: str
    required: true
  env:
    description:
      - The environment of the entry (O(state=record)) or whose ledger is read
        (O(state=query); C(staging) for the staging gate).
    type: str
    required: true
  state:
    description:
      - C(record) append an entry, C(query) read.
    type: str
    choices: [record, query]
    default: query
  version:
    description:
      - The app version. Required with O(state=record); with O(state=query), the version
        asked about.
    type: str
  artifact_sha256:
    description:
      - sha256 of the release artifact (64 lowercase hex digits). With O(state=query), only
        succeeded entries of that very artifact count.
    type: str
  release_id:
    description:
      - The release id of the run (one per run, whatever the batches). Required with
        O(state=record).
    type: str
  status:
    description:
      - The outcome recorded. Required with O(state=record).
    type: str
    choices: [succeeded, failed, rolled_back]
  hotfix:
    description:
      - Whether the deploy was a hotfix.
    type: bool
    default: false
  run_id:
    description:
      - The run's id. Default - the environment variable C(OPSBOOK_RUN_ID) (set by
        C(opsbook run)).
    type: str
  operator:
    description:
      - Who deployed. Default - C(OPSBOOK_OPERATOR), else the controller's login name.
    type: str
  reason:
    description:
      - Why.
    type: str
    default: ""
  playbook:
    description:
      - The playbook that recorded the entry.
    type: str
    default: ""
  hosts:
    description:
      - The hosts the release went to.
    type: list
    elements: str
    default: []
  details:
    description:
      - Anything else worth keeping (git sha, rolled back hosts, durations). No secrets.
    type: dict
    default: {}
  limit:
    description:
      - O(state=query) without O(version) - how many of the newest entries to return.
    type: int
    default: 20
attributes:
  check_mode:
    support: full
    description: O(state=record) reports the entry it would write and writes nothing;
      O(state=query) only reads.
notes:
  - Entries are never modified or deleted by opsbook. To retract one by hand, delete both its
    object under C(ledger/) and its copy under C(ledger-index/).
seealso:
  - module: opsbook.runbooks.deploy_lock
    description: One deploy at a time per environment.
"""

EXAMPLES = r"""
- name: Record the successful deploy
  deploy_ledger:
    url: "{{ opsbook_state_url }}"
    env: "{{ opsbook_env }}"
    state: record
    version: "{{ app_version }}"
    artifact_sha256: "{{ release_artifact_local.sha256 }}"
    release_id: "{{ release_id }}"
    status: succeeded
    hotfix: "{{ hotfix | default(false) | bool }}"
    reason: "{{ opsbook_reason | default('') }}"
    hosts: "{{ ansible_play_hosts_all }}"
  delegate_to: localhost
  run_once: true

- name: Did this artifact succeed in staging?
  deploy_ledger:
    url: "{{ opsbook_state_url }}"
    env: staging
    version: "{{ app_version }}"
    artifact_sha256: "{{ release_artifact_local.sha256 }}"
  delegate_to: localhost
  run_once: true
  register: staging
"""

RETURN = r"""
entry:
  description: The entry recorded (or already there, or that check mode would record).
  returned: O(state=record)
  type: dict
  sample:
    format_version: 1
    env: staging
    version: 2.1.0
    artifact_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    release_id: 20240501T120000Z-2.1.0
    status: succeeded
    hotfix: false
    run_id: 0b7c5e0e-4d1f-4c5e-9a59-0c6b1f0b6a6e
    operator: alice
    reason: release 2.1.0
    playbook: deploy
    hosts: [app1, app2]
    details: {}
    recorded_at: "2024-05-01T12:04:11.120301Z"
key:
  description: Where the entry is.
  returned: O(state=record)
  type: str
  sample: s3://ops-state/shop/ledger/staging/20240501T120411.120301Z-20240501T120000Z-2.1.0.json
entries:
  description: O(state=query) - the entries of O(version) (or the newest O(limit) entries),
    oldest first.
  returned: O(state=query)
  type: list
  elements: dict
count:
  description: Number of RV(entries).
  returned: O(state=query)
  type: int
succeeded:
  description: Whether O(version) succeeded in O(env) (with O(artifact_sha256), that artifact);
    null without O(version).
  returned: O(state=query)
  type: bool
succeeded_count:
  description: How many succeeded entries count for RV(succeeded).
  returned: O(state=query)
  type: int
succeeded_other_sha256:
  description: sha256 of other artifacts of the same version that succeeded (a rebuilt
    artifact is not the one that was tested).
  returned: O(state=query)
  type: list
  elements: str
latest:
  description: The newest entry of RV(entries) (null when none).
  returned: O(state=query)
  type: dict
last_succeeded:
  description: The newest entry that counts for RV(succeeded) (null when none).
  returned: O(state=query)
  type: dict
msg:
  description: A one-line summary.
  returned: always
  type: str
  sample: 2.1.0 succeeded in staging (1 times; last 2024-05-01T12:04:11.120301Z, release ...)
"""

import os
import re
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_deploy_state import (
    LEDGER_STATUSES,
    DeployStateError,
    Ledger,
    ledger_entry_errors,
    login_name,
    state_errors,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage import (
    StorageError,
    open_storage,
)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "url": {"type": "str", "required": True},
        "env": {"type": "str", "required": True},
        "state": {"type": "str", "choices": ["record", "query"], "default": "query"},
        "version": {"type": "str"},
        "artifact_sha256": {"type": "str"},
        "release_id": {"type": "str"},
        "status": {"type": "str", "choices": list(LEDGER_STATUSES)},
        "hotfix": {"type": "bool", "default": False},
        "run_id": {"type": "str"},
        "operator": {"type": "str"},
        "reason": {"type": "str", "default": ""},
        "playbook": {"type": "str", "default": ""},
        "hosts": {"type": "list", "elements": "str", "default": []},
        "details": {"type": "dict", "default": {}},
        "limit": {"type": "int", "default": 20},
        "s3_endpoint_url": {"type": "str"},
        "s3_region": {"type": "str"},
    }


def fill_defaults(params: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    filled = dict(params)
    if not filled.get("run_id"):
        filled["run_id"] = environ.get("OPSBOOK_RUN_ID") or ""
    if not filled.get("operator"):
        filled["operator"] = environ.get("OPSBOOK_OPERATOR") or login_name()
    if filled.get("artifact_sha256"):
        filled["artifact_sha256"] = str(filled["artifact_sha256"]).strip().lower()
    return filled


def validate_params(params: dict[str, Any]) -> list[str]:
    errors = state_errors(params)
    if params.get("state") == "record":
        missing = [n for n in ("version", "release_id", "status") if not params.get(n)]
        if missing:
            errors.append(f"state=record needs {', '.join(missing)}")
        else:
            errors += ledger_entry_errors(params)
    else:
        for name in ("release_id", "status"):
            if params.get(name):
                errors.append(f"{name} is only used with state=record")
        sha = params.get("artifact_sha256")
        if sha and not params.get("version"):
            errors.append("artifact_sha256 needs version with state=query")
        elif sha and not SHA256_RE.match(sha):
            errors.append(f"artifact_sha256 must be 64 lowercase hex digits, got {sha!r}")
        if (params.get("limit") or 0) < 0:
            errors.append("limit must be >= 0")
    return errors


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    storage = open_storage(
        params["url"], endpoint_url=params.get("s3_endpoint_url"), region=params.get("s3_region")
    )
    ledger = Ledger(storage, params["env"])
    if params.get("state") == "record":
        return ledger.record(params, check_mode=check_mode)
    return ledger.query(
        params.get("version") or None,
        sha256=params.get("artifact_sha256") or None,
        limit=params.get("limit") if params.get("limit") is not None else 20,
    )


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters: the result, with ``failed`` on a failure.
    main() runs it in a module process; on the controller the action plugin
    (action_plugins/deploy_ledger.py) runs it in the task's worker."""
    params = fill_defaults(params, dict(os.environ))
    errors = validate_params(params)
    if errors:
        return {
            "failed": True,
            "changed": False,
            "msg": "deploy_ledger: invalid input: " + "; ".join(errors) + "; nothing was recorded",
        }
    try:
        return run(params, check_mode)
    except DeployStateError as exc:
        return {"changed": False, **exc.details, "failed": True, "msg": f"deploy_ledger: {exc}"}
    except StorageError as exc:
        what = (
            "recording the entry failed (an entry is one object: it is either there whole or "
            "not at all; re-running records it once)"
            if params.get("state") == "record"
            else "reading the ledger failed"
        )
        return {"failed": True, "changed": False, "msg": f"deploy_ledger: {what}: {exc}"}


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
