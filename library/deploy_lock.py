#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""deploy_lock: the per-environment deploy lock, kept under opsbook_state_url (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: deploy_lock
short_description: Take, release or inspect the deploy lock of an environment
description:
  - One deploy (or rollback) at a time per environment. The lock is one object,
    C(<url>/locks/<env>/deploy.json), holding the owner, run id, reason, playbook, the
    controller's host name, when it was acquired and when it expires.
  - O(state=present) takes the lock B(atomically). On C(file://) storage the object is created
    by hard-linking a complete temporary file (the C(link) system call fails when the lock
    exists) and replaced or deleted under C(flock). On C(s3://) storage it is a conditional write
    (PutObject C(If-None-Match) C(*); replace and delete with C(If-Match) on the version read).
    Whether the S3 endpoint honours those headers is probed first (some S3-compatible servers
    ignore them); when it does not, an intent protocol that relies only on S3's strong
    read-after-write and list consistency is used instead (see O(conditional_writes)).
  - Held by the same O(run_id) - ok, nothing changes (re-entrant; with O(refresh=true), or
    when it has expired, its expiry is pushed to now + O(ttl_s)). Held by another run whose
    lock has expired - it is taken over, with a warning naming the previous holder. Held by
    another live run - the task fails, naming the owner, run, reason and expiry, and how to
    break the lock; nothing is changed. O(break_lock=true) replaces another run's lock (or an
    unreadable lock object), with a warning.
  - O(state=absent) removes the lock only when O(run_id) holds it; another run's lock is left in
    place, with a warning (the task does not fail). With O(break_lock=true) whatever lock is
    there is removed (the operator's explicit unlock).
  - O(state=info) only reads.
  - Every write is conditional on the version read, so two runs can never both believe they
    hold the lock; a run that loses a race reads the lock again and decides again.
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
      - Where the deploy state lives (the inventory's C(opsbook_state_url)),
        C(s3://bucket/prefix) or C(file:///absolute/path). Use the same URL for every
        environment of one app.
    type: str
    required: true
  env:
    description:
      - The environment whose deploy lock this is (the inventory's C(opsbook_env)).
    type: str
    required: true
  state:
    description:
      - C(present) take the lock, C(absent) release it, C(info) read it.
    type: str
    choices: [present, absent, info]
    default: present
  owner:
    description:
      - Who takes the lock (a person or a service). Default - the environment variable
        C(OPSBOOK_OPERATOR) (set by C(opsbook run)), else the login name on the controller.
    type: str
  run_id:
    description:
      - The id of this run; the same id re-enters the lock and is needed to release it.
        Default - the environment variable C(OPSBOOK_RUN_ID) (set by C(opsbook run)).
      - Required for O(state=present), and for O(state=absent) unless O(break_lock=true).
    type: str
  reason:
    description:
      - Why (shown to anyone who finds the environment locked).
    type: str
    default: ""
  playbook:
    description:
      - The playbook taking the lock (shown to anyone who finds the environment locked).
    type: str
    default: ""
  ttl_s:
    description:
      - Seconds until the lock expires (from now); an expired lock is taken over by the next
        run. Longer than the longest deploy; at most 7 days.
    type: int
    default: 3600
  refresh:
    description:
      - With O(state=present) and the lock already held by O(run_id), push its expiry to
        now + O(ttl_s) (a heartbeat for long runs).
    type: bool
    default: false
  holder_pid:
    description:
      - With O(state=present), the process that holds the lock for the run on the controller.
        It is recorded in the lock with the process's start (boot id and start time), so that
        a later run on the same controller tells a crashed or killed run's lock (its process
        is gone) from a live one, and says so. On the controller the action plugin sets it to
        the C(ansible-playbook) process; unset, the lock records no process.
    type: int
  break_lock:
    description:
      - With O(state=present), replace another run's live lock (or an unreadable lock object);
        with O(state=absent), remove whatever lock is there. Only when that run is known to be
        dead. Reported as a warning with the lock that was broken.
    type: bool
    default: false
  break_hint:
    description:
      - How the operator breaks the lock, quoted in the message when the environment is
        locked (a playbook passes its own switch, e.g. C(-e deploy_lock_break=true)).
    type: str
    default: break_lock=true
  conditional_writes:
    description:
      - C(s3://) only. C(auto) probes whether the endpoint honours conditional writes (a
        small object C(locks/.conditional-writes-probe) is written once and left) and uses
        them when it does, else the intent protocol. C(always) uses them without probing
        (fails if the endpoint answers 501). C(never) always uses the intent protocol.
    type: str
    choices: [auto, always, never]
    default: auto
  contention_timeout_s:
    description:
      - Intent protocol only - seconds to keep retrying while other runs are taking the lock
        at the same moment, before failing.
    type: float
    default: 30
attributes:
  check_mode:
    support: full
    description: Reads the lock and reports what would happen (RV(action), RV(acquirable));
      writes nothing - not even the S3 capability probe. A lock that a real run could not
      take fails the task in check mode too.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller (C(delegate_to) C(localhost)), where the state URL is
      reachable.
notes:
  - Expiry is judged by the clock of the controller reading the lock (UTC); keep controllers'
    clocks in sync (NTP). A few seconds of skew only shift when an abandoned lock can be taken.
  - An S3 endpoint that honours conditional writes B(partly) (say If-None-Match but not
    If-Match) gets the intent protocol.
  - The intent protocol needs strongly consistent reads and lists (AWS S3 since December 2020,
    MinIO); it refuses to proceed when a freshly written object is not listed.
seealso:
  - module: opsbook.runbooks.deploy_ledger
    description: The record of what was deployed where.
"""

EXAMPLES = r"""
- name: Take the deploy lock of this environment
  deploy_lock:
    url: "{{ opsbook_state_url }}"
    env: "{{ opsbook_env }}"
    run_id: "{{ lookup('ansible.builtin.env', 'OPSBOOK_RUN_ID') }}"
    reason: "{{ opsbook_reason | default('') }}"
    playbook: deploy
    ttl_s: 3600
    s3_endpoint_url: "{{ s3_endpoint_url | default(omit) }}"
  delegate_to: localhost
  run_once: true

- name: Release it (only if this run holds it)
  deploy_lock:
    url: "{{ opsbook_state_url }}"
    env: "{{ opsbook_env }}"
    run_id: "{{ lookup('ansible.builtin.env', 'OPSBOOK_RUN_ID') }}"
    state: absent
  delegate_to: localhost
  run_once: true

- name: Remove a dead run's lock (operator's explicit unlock)
  deploy_lock:
    url: "{{ opsbook_state_url }}"
    env: production
    state: absent
    break_lock: true
  delegate_to: localhost

- name: Who holds the lock?
  deploy_lock:
    url: "{{ opsbook_state_url }}"
    env: production
    state: info
  delegate_to: localhost
  register: lock
"""

RETURN = r"""
action:
  description: What was done (or, in check mode, would be) - C(create), C(reenter), C(refresh),
    C(take_over), C(break) for O(state=present); C(none), C(release), C(break), C(leave) for
    O(state=absent).
  returned: O(state=present) or O(state=absent)
  type: str
  sample: create
acquired:
  description: Whether this run holds the lock now (false in check mode unless it already did).
  returned: O(state=present)
  type: bool
acquirable:
  description: Whether the lock can be (or was) taken by this run.
  returned: O(state=present)
  type: bool
released:
  description: Whether a lock object was removed (never in check mode).
  returned: O(state=absent)
  type: bool
lock:
  description: The lock - after O(state=present), the one this run holds (or would hold); with
    O(state=absent) and O(state=info), the one found (null when none).
  returned: always
  type: dict
  sample:
    format_version: 1
    owner: alice
    run_id: 0b7c5e0e-4d1f-4c5e-9a59-0c6b1f0b6a6e
    reason: release 2.1.0
    playbook: deploy
    host: ops-1
    acquired_at: "2024-05-01T12:00:00Z"
    expires_at: "2024-05-01T13:00:00Z"
    ttl_s: 3600
previous:
  description: The lock this run took over (expired) or broke; null otherwise.
  returned: O(state=present)
  type: dict
held:
  description: Whether a lock that has not expired is there.
  returned: O(state=info)
  type: bool
expired:
  description: Whether the lock found has expired.
  returned: O(state=info)
  type: bool
held_by_us:
  description: Whether the lock found belongs to O(run_id).
  returned: O(state=info)
  type: bool
key:
  description: The lock object's location.
  returned: always
  type: str
  sample: s3://ops-state/shop/locks/production/deploy.json
env:
  description: The environment.
  returned: always
  type: str
atomicity:
  description: How acquisition is made atomic on this storage.
  returned: O(state=present) or O(state=absent)
  type: str
  sample: "s3: conditional writes (If-None-Match / If-Match)"
probe:
  description: S3 with O(conditional_writes=auto) - which conditional requests the endpoint
    honoured (null when not probed).
  returned: O(state=present) or O(state=absent)
  type: dict
  sample: {if_none_match: true, if_match: true, delete_if_match: true}
msg:
  description: A one-line summary.
  returned: always
  type: str
  sample: "deploy lock of production acquired: expires 2024-05-01T13:00:00Z"
"""

import os
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_deploy_state import (
    DEFAULT_TTL_S,
    DeployLock,
    DeployStateError,
    login_name,
    state_errors,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_storage import (
    StorageError,
    open_storage,
)


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "url": {"type": "str", "required": True},
        "env": {"type": "str", "required": True},
        "state": {"type": "str", "choices": ["present", "absent", "info"], "default": "present"},
        "owner": {"type": "str"},
        "run_id": {"type": "str"},
        "reason": {"type": "str", "default": ""},
        "playbook": {"type": "str", "default": ""},
        "ttl_s": {"type": "int", "default": DEFAULT_TTL_S},
        "refresh": {"type": "bool", "default": False},
        "holder_pid": {"type": "int"},
        "break_lock": {"type": "bool", "default": False},
        "break_hint": {"type": "str", "default": "break_lock=true"},
        "conditional_writes": {
            "type": "str",
            "choices": ["auto", "always", "never"],
            "default": "auto",
        },
        "contention_timeout_s": {"type": "float", "default": 30.0},
        "s3_endpoint_url": {"type": "str"},
        "s3_region": {"type": "str"},
    }


def fill_defaults(params: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """owner and run_id from the environment opsbook run sets, when not given."""
    filled = dict(params)
    if not filled.get("run_id"):
        filled["run_id"] = environ.get("OPSBOOK_RUN_ID") or ""
    if not filled.get("owner"):
        filled["owner"] = environ.get("OPSBOOK_OPERATOR") or login_name()
    return filled


def validate_params(params: dict[str, Any]) -> list[str]:
    errors = state_errors(params)
    state = params.get("state") or "present"
    if state == "present" and not params.get("run_id"):
        errors.append("run_id is required to take the lock (opsbook run sets OPSBOOK_RUN_ID)")
    if state == "absent" and not params.get("run_id") and not params.get("break_lock"):
        errors.append("run_id is required to release the lock (or break_lock=true)")
    ttl = params.get("ttl_s")
    if ttl is not None and not 1 <= ttl <= 7 * 86400:
        errors.append(f"ttl_s must be between 1 and 604800 (7 days), got {ttl}")
    if (params.get("contention_timeout_s") or 0) < 0:
        errors.append("contention_timeout_s must be >= 0")
    if params.get("refresh") and state != "present":
        errors.append("refresh is only used with state=present")
    return errors


def run(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """Do what params ask; raises DeployStateError (with result details) or StorageError."""
    storage = open_storage(
        params["url"], endpoint_url=params.get("s3_endpoint_url"), region=params.get("s3_region")
    )
    lock = DeployLock(
        storage,
        params["env"],
        conditional_writes=params.get("conditional_writes") or "auto",
        contention_timeout_s=float(params.get("contention_timeout_s") or 0),
        break_hint=params.get("break_hint") or "break_lock=true",
    )
    state = params.get("state") or "present"
    if state == "info":
        return lock.info(params.get("run_id") or None)
    if state == "present":
        result = lock.acquire(
            owner=params["owner"],
            run_id=params["run_id"],
            reason=params.get("reason") or "",
            ttl_s=params.get("ttl_s") or DEFAULT_TTL_S,
            playbook=params.get("playbook") or "",
            pid=params.get("holder_pid") or None,
            break_lock=bool(params.get("break_lock")),
            refresh=bool(params.get("refresh")),
            check_mode=check_mode,
        )
    else:
        result = lock.release(
            run_id=params.get("run_id") or None,
            break_lock=bool(params.get("break_lock")),
            check_mode=check_mode,
        )
    result["probe"] = lock.probe
    return result


def storage_failure(params: dict[str, Any], exc: StorageError) -> str:
    """What a storage failure means for the lock, in words (a write may have landed)."""
    state = params.get("state") or "present"
    if state == "info":
        return f"reading the deploy lock failed: {exc}"
    return (
        f"the deploy state storage failed: {exc}. A write that failed in flight may still have "
        f"landed: state=info shows the lock of {params['env']}; a lock held by run "
        f"{params.get('run_id') or '?'} is re-entered by that run_id and released with it"
    )


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters: the result, with ``failed`` on a failure and
    ``warnings``. main() runs it in a module process; on the controller the action plugin
    (action_plugins/deploy_lock.py) runs it in the task's worker."""
    params = fill_defaults(params, dict(os.environ))
    errors = validate_params(params)
    if errors:
        return {
            "failed": True,
            "changed": False,
            "msg": "deploy_lock: invalid input: " + "; ".join(errors) + "; nothing was changed",
        }
    try:
        result = run(params, check_mode)
    except DeployStateError as exc:
        return {"changed": False, **exc.details, "failed": True, "msg": f"deploy_lock: {exc}"}
    except StorageError as exc:
        return {
            "failed": True,
            "changed": False,
            "msg": f"deploy_lock: {storage_failure(params, exc)}",
        }
    result["warnings"] = result.pop("warnings_", [])
    return result


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
