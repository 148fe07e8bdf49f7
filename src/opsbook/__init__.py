"""opsbook: operations runbooks as Ansible playbooks, run over ansible-runner.

Python entry point::

    import opsbook
    result = opsbook.run("health_check", "local", reason="morning check")
    result.status, result.rc, result.stats, result.outputs

    handle = opsbook.start("backup", "local", reason="before the upgrade")
    for event in handle.events():    # or: async for event in handle
        ...
    handle.cancel()                  # as Ctrl-C: the runbook cleans up; status "canceled"
    result = handle.wait()           # or: await handle

See :func:`opsbook.runner.run`, :func:`opsbook.handle.start` and
:class:`opsbook.runner.RunbookRunner`.
"""

from opsbook.exitcodes import ExitCode, OpsbookInputError
from opsbook.handle import RunHandle, start
from opsbook.runner import RunbookRunner, RunPlan, RunResult, run

__version__ = "0.1.0"

__all__ = [
    "ExitCode",
    "OpsbookInputError",
    "RunHandle",
    "RunPlan",
    "RunResult",
    "RunbookRunner",
    "__version__",
    "run",
    "start",
]
