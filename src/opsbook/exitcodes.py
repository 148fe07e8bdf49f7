"""Process exit codes of ``opsbook`` and the error raised for bad input.

The codes are part of the interface: cron, AWX and CI jobs branch on them.

====  ===================  ====================================================
code  name                 meaning
====  ===================  ====================================================
0     SUCCESS              the runbook ran and every host succeeded
1     FAILED               a task failed on some host (or Ansible itself failed)
2     BAD_INPUT            bad input (unknown runbook or env, malformed ``-e``,
                           bad option); nothing was run
3     UNREACHABLE          some hosts could not be reached, none failed otherwise
4     TIMEOUT_OR_CANCELED  the run hit ``--timeout`` or was canceled (Ctrl-C,
                           SIGTERM, cancel callback)
5     WARN                 the run succeeded, and a check it made published the
                           verdict ``warn`` (``health_check``, ``routine_checks``,
                           ...): nothing failed, something wants a look
====  ===================  ====================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any

from opsbook import _notify


class ExitCode(IntEnum):
    """Exit code of ``opsbook`` (and ``RunResult.rc``)."""

    SUCCESS = 0
    FAILED = 1
    BAD_INPUT = 2
    UNREACHABLE = 3
    TIMEOUT_OR_CANCELED = 4
    WARN = 5


# RunResult.status -> exit code.
_STATUS_CODES: dict[str, ExitCode] = {
    "successful": ExitCode.SUCCESS,
    "failed": ExitCode.FAILED,
    "unreachable": ExitCode.UNREACHABLE,
    "timeout": ExitCode.TIMEOUT_OR_CANCELED,
    "canceled": ExitCode.TIMEOUT_OR_CANCELED,
}

EPILOG = """\
exit codes:
  0  success: every host succeeded
  1  failed: a task failed on some host, or Ansible itself failed
  2  bad input: unknown runbook or environment, malformed -e, bad option; nothing was run
  3  unreachable: some hosts could not be reached and none failed otherwise
  4  timeout or canceled: --timeout was hit, or the run was interrupted (Ctrl-C, SIGTERM)
  5  warn: the run succeeded, and a check it made published the verdict warn
"""


# The worst ``verdict`` (ok < warn < fail) among the outputs a run published: each runbook
# that checks things publishes ``{"verdict": "ok" | "warn" | "fail", ...}`` under its own
# set_stats key. One rule with the operation log's notifications (module_utils/opsbook_notify.py).
worst_verdict = _notify.worst_verdict


def exit_code_for(status: str, outputs: Mapping[str, Any] | None = None) -> ExitCode:
    """Return the exit code for a ``RunResult.status`` value (and what the run published).

    Unknown statuses count as failures: a run we cannot classify did not succeed. A successful
    run whose outputs carry ``verdict: warn`` exits WARN (5), for cron and CI to branch on.
    """
    code = _STATUS_CODES.get(status, ExitCode.FAILED)
    if code == ExitCode.SUCCESS and worst_verdict(outputs) == "warn":
        return ExitCode.WARN
    return code


class OpsbookInputError(ValueError):
    """Bad input, detected before anything runs (exit code 2).

    ``input_name`` names the input as the user gave it (``--env``, ``-e``,
    ``runbook``...), ``problem`` says what is wrong with it in one line.
    """

    def __init__(self, input_name: str, problem: str) -> None:
        super().__init__(f"{input_name}: {problem}")
        self.input_name = input_name
        self.problem = problem
