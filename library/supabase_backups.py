#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""supabase_backups: a Supabase project's database backups - the list, the newest completed
one and its age, point-in-time recovery - for the restore drill and routine checks (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: supabase_backups
short_description: Read a Supabase project's database backups and how fresh they are
description:
  - Reads C(GET /v1/projects/{ref}/database/backups) of the Management API and says what a
    restore drill or a routine check needs - the backups newest first (RV(backups)), the
    newest completed one (RV(latest)) and its age in hours (RV(latest_age_h)), whether
    point-in-time recovery is on (RV(pitr_enabled)) and its newest restore point
    (RV(pitr_latest_at)), and with O(max_age_h) whether the newest restore point of either
    kind is recent enough (RV(fresh)). Read-only - it never changes anything.
  - Supabase takes either daily backups or, with the PITR add-on, continuous (WAL) backups -
    "mutually exclusive" in its docs - so with PITR on the list may hold no recent daily
    backup; the newest restore point is then PITR's
    (C(physical_backup_data.latest_physical_backup_date_unix)), and RV(restore_point_source)
    says which one RV(restore_point_age_h) is.
  - Supabase's list is not sorted and its times are ISO 8601 (C(2026-08-10T04:30:15Z)); a time
    it writes otherwise is kept as written, without an age, and counted in RV(unreadable).
  - The module does not fail on a stale backup - RV(fresh) says it, and the playbook decides
    (an C(assert), a notification). Restoring is not offered by this module.
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
      - A Supabase personal access token or OAuth token allowed to read the database
        (C(database:read)); sent as C(Authorization Bearer) only. When not given, the
        controller's environment variable C(SUPABASE_ACCESS_TOKEN) is used.
    type: str
    required: true
  max_age_h:
    description:
      - The oldest the newest restore point may be, in hours, for RV(fresh) to be true (a daily
        backup schedule - 26 allows a late run). Unset - RV(fresh) is null.
    type: float
  base_url:
    description:
      - The Management API (a stand-in's URL in tests; the inventory's C(supabase_api_url)).
    type: str
    default: https://api.supabase.com
attributes:
  check_mode:
    support: full
    description: It only reads, so check mode runs it as a real run does.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller (C(delegate_to) C(localhost)).
notes:
  - Ages are measured with the controller's clock against Supabase's times (UTC).
seealso:
  - name: Supabase Management API - list all backups
    description: The call the module makes.
    link: https://supabase.com/docs/reference/api/v1-list-all-backups
  - name: Supabase - database backups
    description: Daily backups, PITR, and what each plan keeps.
    link: https://supabase.com/docs/guides/platform/backups
"""

EXAMPLES = r"""
- name: Read the backups
  supabase_backups:
    project_ref: "{{ supabase_project_ref }}"
    token: "{{ supabase_access_token }}"
    max_age_h: 26
  delegate_to: localhost
  register: supabase_backups_found

- name: The newest restore point is recent enough
  ansible.builtin.assert:
    that: supabase_backups_found.fresh
    fail_msg: >-
      The newest restore point of {{ supabase_project_ref }} is
      {{ supabase_backups_found.restore_point_age_h }} h old (more than 26 h)
"""

RETURN = r"""
backups:
  description: The backups, newest first - id, status (COMPLETED, FAILED, PENDING, REMOVED,
    ARCHIVED, CANCELLED), is_physical_backup, inserted_at (as Supabase wrote it), age_h (null
    when the time is unreadable).
  returned: success
  type: list
  elements: dict
  sample: [{id: 1769708701, status: COMPLETED, is_physical_backup: true,
            inserted_at: "2026-09-24T06:40:10.198Z", age_h: 5.3}]
counts:
  description: How many backups have each status.
  returned: success
  type: dict
  sample: {COMPLETED: 7, FAILED: 1}
latest:
  description: The newest COMPLETED backup (an element of RV(backups)); null when none.
  returned: success
  type: dict
latest_age_h:
  description: Hours since RV(latest) was taken; null when there is none.
  returned: success
  type: float
  sample: 5.3
pitr_enabled:
  description: Whether point-in-time recovery is on.
  returned: success
  type: bool
walg_enabled:
  description: Whether WAL-G archiving is on (Supabase's field).
  returned: success
  type: bool
region:
  description: The project's region.
  returned: success
  type: str
pitr_earliest_at:
  description: With PITR on, the earliest time it can restore to (UTC, ISO 8601).
  returned: success
  type: str
pitr_latest_at:
  description: With PITR on, the newest time it can restore to (UTC, ISO 8601).
  returned: success
  type: str
restore_point_age_h:
  description: Hours since the newest restore point of either kind (RV(latest) or
    RV(pitr_latest_at)); null when there is none.
  returned: success
  type: float
restore_point_source:
  description: Which kind RV(restore_point_age_h) is - C(backup) or C(pitr); null when none.
  returned: success
  type: str
unreadable:
  description: Backups whose time could not be read.
  returned: success
  type: int
max_age_h:
  description: O(max_age_h), as given.
  returned: success
  type: float
fresh:
  description: Whether RV(restore_point_age_h) is at most O(max_age_h) (false when there is
    no restore point; null without O(max_age_h)).
  returned: success
  type: bool
api_calls:
  description: Every attempt sent, as C(METHOD /path STATUS) (null - no answer).
  returned: always
  type: list
  elements: str
  sample: [GET /v1/projects/abcdefghijklmnopqrst/database/backups 200]
msg:
  description: A one-line summary, or what failed.
  returned: always
  type: str
"""

import time
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_platform import (
    invalid_input,
    open_client,
)
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_rest import RestError
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_supabase import (
    backup_summary,
    list_backups,
    refused_hint,
    supabase_argument_spec,
    supabase_option_errors,
)

NAME = "supabase_backups"


def argument_spec() -> dict[str, dict[str, Any]]:
    return supabase_argument_spec(max_age_h={"type": "float"})


def validate_params(params: dict[str, Any]) -> list[str]:
    errors = supabase_option_errors(params)
    max_age = params.get("max_age_h")
    if max_age is not None and max_age <= 0:
        errors.append(f"max_age_h must be > 0, got {max_age:g}")
    return errors


def describe(summary: dict[str, Any]) -> str:
    latest = summary["latest"]
    text = (
        f"newest completed backup {latest['inserted_at']} ({latest['age_h']:g} h old)"
        if latest
        else "no completed backup listed"
    )
    text += "; PITR " + (
        f"on, newest restore point {summary['pitr_latest_at']}"
        if summary["pitr_enabled"] and summary["pitr_latest_at"]
        else ("on" if summary["pitr_enabled"] else "off")
    )
    if summary["fresh"] is not None:
        age = summary["restore_point_age_h"]
        state = "fresh" if summary["fresh"] else "STALE"
        shown = "none" if age is None else f"{age:g} h"
        text += f"; {state} (newest restore point: {shown}, limit {summary['max_age_h']:g} h)"
    return text


def execute(
    params: dict[str, Any], check_mode: bool, *, now: float | None = None, **client_kw: Any
) -> dict[str, Any]:
    """The module's work on validated parameters (main() runs it; tests pass ``now`` and the
    client's ``clock``/``sleep``). Check mode changes nothing here: the module only reads."""
    del check_mode
    errors = validate_params(params)
    if errors:
        return invalid_input(NAME, errors)
    client = open_client(params, **client_kw)
    try:
        answer = list_backups(client, params["project_ref"])
    except RestError as exc:
        return {
            "failed": True,
            "changed": False,
            "api_calls": list(client.history),
            "msg": f"{NAME}: {client.scrub(str(exc))}{refused_hint(exc)}; nothing was changed "
            "(the module only reads)",
        }
    summary = backup_summary(
        answer, now=time.time() if now is None else now, max_age_h=params.get("max_age_h")
    )
    return {
        **summary,
        "changed": False,
        "api_calls": list(client.history),
        "msg": describe(summary),
    }


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
