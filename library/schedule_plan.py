#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""schedule_plan: the AWX job templates and schedules one environment gets from schedules.yml."""

from __future__ import annotations

DOCUMENTATION = r"""
module: schedule_plan
short_description: Read schedules.yml and plan the AWX job templates and schedules of an env
description:
  - Reads the runbooks' schedule (C(schedules.yml) at the project root - one entry per
    scheduled run, with C(name), C(runbook), C(cron), C(envs), C(reason), C(timeout) and
    C(extra_vars)) and checks B(every) entry before anything is touched - an unknown runbook
    (not a playbook in O(playbooks_dir)), a bad cron expression (field count, ranges, steps,
    names), a duplicate name, an unknown key, an unknown environment (with O(inventories_dir)),
    a secret in C(extra_vars). The task fails listing every problem, naming the entry and the
    field, and nothing is changed.
  - Returns what C(playbooks/awx_setup.yml) makes in AWX for O(env) - one job template per
    runbook scheduled there (C(<prefix>-<env>-<runbook>), at C(playbooks/<runbook>.yml)) and
    one schedule per entry (C(<prefix>-<env>-<entry>)), each cron expression turned into the
    rrule AWX takes (for C(0 2 * * *),
    C(DTSTART;TZID=UTC:20250101T000000 RRULE:FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=0)).
    An expression one rrule cannot say - cron's OR of a day of the month and a day of the
    week, C(0 4 1 * 1) - is refused, named.
  - The same rules as C(opsbook schedule install) (the crontab), from one place -
    C(module_utils/opsbook_schedules.py).
version_added: "0.5.0"
author:
  - opsbook maintainers (@opsbook)
# runs in the task's worker
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_controller
options:
  path:
    description:
      - The schedule file.
    type: path
    required: true
  env:
    description:
      - The environment whose entries are planned (the inventory's C(opsbook_env)).
    type: str
    required: true
  playbooks_dir:
    description:
      - The project's C(playbooks/) - the runbooks an entry may name.
    type: path
    required: true
  inventories_dir:
    description:
      - The project's C(inventories/) - the environments an entry may name. Without it, the
        names are not checked against any.
    type: path
  prefix:
    description:
      - The first word of the names of what AWX gets.
    type: str
    default: opsbook
  existing:
    description:
      - What AWX holds already - C(projects), C(inventories), C(job_templates) (names or
        objects with a C(name)) and C(schedules) (objects with C(name) and C(description)), as
        the C(awx.awx.controller_api) lookup returns them. Says what exists (a dry run cannot
        make a job template whose project does not exist yet) and which schedules are
        RV(plan.stale).
    type: dict
    default: {}
attributes:
  check_mode:
    support: full
    description: Reads only; it runs the same in check mode.
notes:
  - Times are UTC - the rrules say C(TZID=UTC), as the crontab lines do on a machine whose
    clock is UTC.
  - The file's format, the crontab and AWX - C(docs/schedules.md).
"""

EXAMPLES = r"""
- name: Plan the AWX objects of this environment
  schedule_plan:
    path: "{{ playbook_dir }}/../schedules.yml"
    env: "{{ opsbook_env }}"
    playbooks_dir: "{{ playbook_dir }}"
    inventories_dir: "{{ playbook_dir }}/../inventories"
  register: awx_setup_plan
"""

RETURN = r"""
plan:
  description: What AWX gets for O(env).
  returned: success
  type: dict
  contains:
    env:
      description: The environment.
      type: str
    job_templates:
      description: One per runbook scheduled in O(env) - C(name), C(runbook), C(playbook),
        C(description).
      type: list
      elements: dict
    schedules:
      description: One per entry applying to O(env) - C(name), C(entry), C(job_template),
        C(cron), C(rrule), C(timeout), C(extra_data) (C(opsbook_reason) and the entry's
        extra vars), C(description).
      type: list
      elements: dict
    project:
      description: The project's name (O(prefix)); C(project_exists) whether AWX has it.
      type: str
    inventory:
      description: The inventory's name (C(<prefix>-<env>)); C(inventory_exists) whether AWX
        has it.
      type: str
    stale:
      description: The schedules made for O(env) before (named C(<prefix>-<env>-...), their
        description ending with C([opsbook schedule env=<env>])) that the file no longer holds.
      type: list
      elements: str
    lines:
      description: "One line per schedule - C(<name>: <cron> UTC -> <job template>)."
      type: list
      elements: str
  sample:
    env: production
    job_templates:
      - name: opsbook-production-backup
        runbook: backup
        playbook: playbooks/backup.yml
    schedules:
      - name: opsbook-production-nightly-backup
        job_template: opsbook-production-backup
        cron: 0 2 * * *
        rrule: DTSTART;TZID=UTC:20250101T000000 RRULE:FREQ=DAILY;INTERVAL=1;BYHOUR=2;BYMINUTE=0
        timeout: 3600
        extra_data: {opsbook_reason: nightly backup}
entries:
  description: How many entries the file holds, for every environment.
  returned: success
  type: int
"""

import os
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module
from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_schedules import (
    ScheduleError,
    awx_plan,
    read_schedules,
    runbook_names,
)


def argument_spec() -> dict[str, Any]:
    return {
        "path": {"type": "path", "required": True},
        "env": {"type": "str", "required": True},
        "playbooks_dir": {"type": "path", "required": True},
        "inventories_dir": {"type": "path"},
        "prefix": {"type": "str", "default": "opsbook"},
        "existing": {"type": "dict", "default": {}},
    }


def _listing(directory: str) -> list[str]:
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The plan for ``params['env']``, or a failure listing every problem of the file."""
    del check_mode  # reads only
    runbooks = runbook_names(_listing(params["playbooks_dir"]))
    envs = None
    if params["inventories_dir"] and os.path.isdir(params["inventories_dir"]):
        envs = [
            name
            for name in _listing(params["inventories_dir"])
            if os.path.isdir(os.path.join(params["inventories_dir"], name))
        ]
    try:
        schedules = read_schedules(params["path"], runbooks=runbooks, envs=envs)
        plan = awx_plan(
            schedules, params["env"], prefix=params["prefix"], existing=params["existing"]
        )
    except ScheduleError as exc:
        problems = "; ".join(exc.problems)
        return {
            "failed": True,
            "changed": False,
            "problems": exc.problems,
            "msg": f"{params['path']}: {problems}. Nothing was changed in AWX.",
        }
    return {"changed": False, "plan": plan, "entries": len(schedules)}


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
