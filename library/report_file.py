#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""report_file: write a runbook's markdown report under the report directory (opsbook)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: report_file
short_description: Write a runbook's markdown report (0600) under the report directory (0700)
description:
  - Writes O(content) to C(<dir>/<runbook>-<env>-<UTC yyyymmddTHHMMSSZ>.md), the one place and
    name every opsbook report has (C(opsbook_report_dir), by default C(.opsbook/reports) in the
    project, which git ignores). The directory is made C(0700) when it does not exist, the file
    C(0600), created exclusively - an earlier report is never overwritten (a second report of
    the same second gets C(-2), C(-3), ... before C(.md)).
  - The path is returned (RV(path)) for the runbook to publish with C(set_stats).
  - A report is the run's B(output), not a change to what the runbook manages - it is written in
    check mode too, and C(changed) is always false (a second run of a runbook that changes
    nothing still reports changed=0).
  - The content must never hold a secret; the module writes what it is given.
version_added: "0.4.0"
author:
  - opsbook maintainers (@opsbook)
# the action attribute
extends_documentation_fragment:
  - opsbook.runbooks.opsbook_controller
options:
  dir:
    description:
      - The report directory (C(opsbook_report_dir)).
    type: path
    required: true
  runbook:
    description:
      - The runbook (letters, digits, C(_ . -)).
    type: str
    required: true
  env:
    description:
      - The environment (letters, digits, C(_ . -)).
    type: str
    required: true
  content:
    description:
      - The markdown report.
    type: str
    required: true
attributes:
  check_mode:
    support: full
    description: Writes the report in check mode too - it is the run's output (see above).
seealso:
  - module: opsbook.runbooks.state_document
    description: What a runbook keeps between its runs (under opsbook_state_url).
"""

EXAMPLES = r"""
- name: Write the report
  report_file:
    dir: "{{ opsbook_report_dir | default(playbook_dir ~ '/../.opsbook/reports') }}"
    runbook: routine_checks
    env: "{{ opsbook_env }}"
    content: "{{ routine_checks_report.markdown }}"
  delegate_to: localhost
  register: written  # written.path
"""

RETURN = r"""
path:
  description: The report's absolute path.
  returned: success
  type: str
  sample: /srv/opsbook/.opsbook/reports/routine_checks-production-20240501T070000Z.md
bytes:
  description: Its size.
  returned: success
  type: int
  sample: 2048
msg:
  description: One line - where the report was written, or why it was not.
  returned: always
  type: str
"""

import os
import re
from datetime import UTC, datetime
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_module import run_module

SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "dir": {"type": "path", "required": True},
        "runbook": {"type": "str", "required": True},
        "env": {"type": "str", "required": True},
        "content": {"type": "str", "required": True},
    }


def input_errors(params: dict[str, Any]) -> list[str]:
    errors = [
        f"{name} {params[name]!r} must be letters, digits, '_', '.' or '-' (at most 100)"
        for name in ("runbook", "env")
        if not SAFE.match(params[name] or "")
    ]
    if not (params["dir"] or "").strip():
        errors.append("dir must not be empty")
    return errors


def report_name(runbook: str, env: str, now: datetime, attempt: int = 1) -> str:
    """``<runbook>-<env>-<yyyymmddTHHMMSSZ>.md`` (``-<attempt>`` before ``.md`` after the first)."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = f"-{attempt}" if attempt > 1 else ""
    return f"{runbook}-{env}-{stamp}{suffix}.md"


def write_report(directory: str, runbook: str, env: str, data: bytes, now: datetime) -> str:
    """Write the report exclusively (0600) in directory (made 0700); return its path."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for attempt in range(1, 100):
        path = os.path.join(directory, report_name(runbook, env, now, attempt))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return path
    raise OSError(f"99 reports of {runbook} in {env} in the same second in {directory}")


def execute(params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    """The module's work on validated parameters (the same in check mode: see the
    documentation). main() runs it in a module process; on the controller the action plugin
    (action_plugins/report_file.py) runs it in the task's worker."""
    del check_mode
    errors = input_errors(params)
    if errors:
        return {"failed": True, "changed": False,
                "msg": "report_file: invalid input: " + "; ".join(errors)}  # fmt: skip
    directory = os.path.abspath(params["dir"])
    data = params["content"].encode("utf-8")
    try:
        path = write_report(directory, params["runbook"], params["env"], data, datetime.now(UTC))
    except OSError as exc:
        return {"failed": True, "changed": False,
                "msg": f"report_file: cannot write the report in {directory}: {exc}"}  # fmt: skip
    return {"changed": False, "path": path, "bytes": len(data), "msg": f"report written: {path}"}


def main() -> None:
    run_module(argument_spec(), execute)


if __name__ == "__main__":
    main()
