"""opsbook: operations runbooks as Ansible playbooks, run over ansible-runner.

Python entry point::

    import opsbook
    result = opsbook.run("health_check", "local", reason="morning check")
    result.status, result.rc, result.stats, result.outputs

See :func:`opsbook.runner.run` and :class:`opsbook.runner.RunbookRunner`.
"""

from opsbook.exitcodes import ExitCode, OpsbookInputError
from opsbook.runner import RunbookRunner, RunPlan, RunResult, run

__version__ = "0.1.0"

__all__ = [
    "ExitCode",
    "OpsbookInputError",
    "RunPlan",
    "RunResult",
    "RunbookRunner",
    "__version__",
    "run",
]
