#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""state_document: one small JSON document a runbook keeps between its runs (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: state_document
short_description: Read or write a small JSON document a runbook keeps between its runs
description:
  - A runbook that compares this run with the last one keeps what it needs under the deploy
    state URL (the inventory's C(opsbook_state_url), beside the deploy lock and the ledger) -
    C(routine_checks.yml) its snapshot of C(pg_stat_statements), to report the slow statements
    B(since) its previous run.
  - O(state=read) returns the document at O(key) (RV(exists) false and RV(data) empty when
    there is none). O(state=write) replaces it with O(data), atomically - a reader sees the old
    document or the new one, whole (C(file://) - a temporary file renamed into place; S3 - one
    PutObject).
  - The document is JSON and small (at most O(max_bytes)); it must never hold a secret.
version_added: "0.4.0"
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
  key:
    description:
      - The document's key under O(url), relative
        (C(routine_checks/production/statements-app.json)).
    type: str
    required: true
  state:
    description:
      - C(read) or C(write).
    type: str
    choices: [read, write]
    default: read
  data:
    description:
      - With O(state=write), the document (a mapping).
    type: dict
  max_bytes:
    description:
      - The largest document read or written, in bytes (JSON-encoded); larger is an error.
    type: int
    default: 4194304
attributes:
  check_mode:
    support: full
    description: O(state=write) reports what it would write (RV(bytes)) and writes nothing;
      O(state=read) only reads.
seealso:
  - module: opsbook.runbooks.deploy_ledger
    description: The ledger of deploys, under the same URL.
"""

EXAMPLES = r"""
- name: Read the snapshot the previous run kept
  state_document:
    url: "{{ opsbook_state_url }}"
    key: "routine_checks/{{ opsbook_env }}/statements-app.json"
  delegate_to: localhost
  register: previous

- name: Keep this run's snapshot for the next run
  state_document:
    url: "{{ opsbook_state_url }}"
    key: "routine_checks/{{ opsbook_env }}/statements-app.json"
    state: write
    data: {taken_at: "2024-05-01T07:00:00Z", statements: {"42": [10, 5200.0, 10]}}
  delegate_to: localhost
"""

RETURN = r"""
exists:
  description: Whether the document existed when read (O(state=read)) or before it was
    written (O(state=write)).
  returned: success
  type: bool
  sample: true
data:
  description: The document read (O(state=read); an empty mapping when there is none).
  returned: O(state=read)
  type: dict
  sample: {taken_at: "2024-05-01T07:00:00Z", statements: {"42": [10, 5200.0, 10]}}
bytes:
  description: The size of the document read or written (would be, in check mode).
  returned: success
  type: int
  sample: 1024
location:
  description: Where the document is (storage URL and key, without credentials).
  returned: always
  type: str
  sample: file:///srv/opsbook/state/routine_checks/production/statements-app.json
msg:
  description: One line - what was read or written.
  returned: always
  type: str
"""

import json
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage import (
    StorageError,
    normalize_key,
    open_storage,
)


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "url": {"type": "str", "required": True},
        "key": {"type": "str", "required": True, "no_log": False},
        "state": {"type": "str", "choices": ["read", "write"], "default": "read"},
        "data": {"type": "dict"},
        "max_bytes": {"type": "int", "default": 4 * 1024 * 1024},
        "s3_endpoint_url": {"type": "str"},
        "s3_region": {"type": "str"},
    }


ARGUMENT_RULES: dict[str, Any] = {"required_if": [("state", "write", ("data",))]}


def encode(data: dict[str, Any], max_bytes: int) -> bytes:
    """The document as stored (sorted keys, compact); ValueError when too large."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    if len(text) > max_bytes:
        raise ValueError(f"the document is {len(text)} bytes, over max_bytes={max_bytes}")
    return text


def decode(raw: bytes, max_bytes: int) -> dict[str, Any]:
    if len(raw) > max_bytes:
        raise ValueError(f"the document is {len(raw)} bytes, over max_bytes={max_bytes}")
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"the document holds a {type(data).__name__}, not a mapping")
    return data


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    key = normalize_key(params["key"])
    storage = open_storage(
        params["url"], endpoint_url=params.get("s3_endpoint_url"), region=params.get("s3_region")
    )
    location = f"{storage.describe().rstrip('/')}/{key}"
    exists = storage.head(key) is not None
    if params["state"] == "read":
        raw = storage.get_bytes(key) if exists else b""
        data = decode(raw, params["max_bytes"]) if exists else {}
        size = len(raw)
        found = f"read {location} ({size} bytes)" if exists else f"no document at {location}"
        return {"changed": False, "exists": exists, "data": data, "bytes": size,
                "location": location, "msg": found}  # fmt: skip
    payload = encode(params["data"], params["max_bytes"])
    if not check_mode:
        storage.put_bytes(key, payload)
    verb = "would write" if check_mode else "wrote"
    return {"changed": True, "exists": exists, "bytes": len(payload), "location": location,
            "msg": f"{verb} {location} ({len(payload)} bytes)"}  # fmt: skip


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters: the result, with ``failed`` on a failure.
    main() runs it in a module process; on the controller the action plugin
    (action_plugins/state_document.py) runs it in the task's worker."""
    if params["state"] == "write" and params.get("data") is None:
        msg = "state_document: invalid input: state=write needs data; nothing was written"
        return {"failed": True, "changed": False, "msg": msg}
    try:
        return run(params, check_mode)
    except (StorageError, ValueError) as exc:  # messages hold no secret (no credentials in them)
        what = "reading" if params["state"] == "read" else "writing (nothing was written)"
        msg = f"state_document: {what} {params['key']!r} in {params['url']}: {exc}"
        return {"failed": True, "changed": False, "msg": msg}


def main() -> None:
    run_module(argument_spec(), execute, **ARGUMENT_RULES)


if __name__ == "__main__":
    main()
