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
====  ===================  ====================================================
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit code of ``opsbook`` (and ``RunResult.rc``)."""

    SUCCESS = 0
    FAILED = 1
    BAD_INPUT = 2
    UNREACHABLE = 3
    TIMEOUT_OR_CANCELED = 4


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
"""


def exit_code_for(status: str) -> ExitCode:
    """Return the exit code for a ``RunResult.status`` value.

    Unknown statuses count as failures: a run we cannot classify did not succeed.
    """
    return _STATUS_CODES.get(status, ExitCode.FAILED)


class OpsbookInputError(ValueError):
    """Bad input, detected before anything runs (exit code 2).

    ``input_name`` names the input as the user gave it (``--env``, ``-e``,
    ``runbook``...), ``problem`` says what is wrong with it in one line.
    """

    def __init__(self, input_name: str, problem: str) -> None:
        super().__init__(f"{input_name}: {problem}")
        self.input_name = input_name
        self.problem = problem
