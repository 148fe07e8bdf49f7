# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/app_env.py: validates the arguments on the controller (see
opsbook_host_module.py), refuses to send values over a connection that would write them to a
file on the host, then runs the stdlib-only module on the host."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.parameters import remove_values
from ansible_collections.opsbook.runbooks.plugins.plugin_utils.opsbook_host_module import (
    HostModuleAction,
)

#: the result's free text, scrubbed of the values of `set` (the module puts none there)
TEXT_FIELDS = ("msg", "module_stdout", "module_stderr", "exception", "stdout", "stderr")


def scrubbed(result: dict[str, Any], secrets: Iterable[str]) -> dict[str, Any]:
    """result with every value of `secrets` masked in its free-text fields."""
    hidden = {value for value in secrets if isinstance(value, str) and value}
    if not hidden:
        return result
    for field in TEXT_FIELDS:
        if isinstance(result.get(field), str):
            result[field] = remove_values(result[field], hidden)
    return result


class ActionModule(HostModuleAction):
    MODULE = "app_env"

    def prepare(self, args: dict[str, Any], task_vars: dict[str, Any]) -> dict[str, Any]:
        params = self.validated(args)
        if params.get("set") and not self._connection.is_pipelining_enabled():
            # Without pipelining a jsonargs module is copied to the host with its arguments
            # in it: the values would be written to a file in the remote tmp directory.
            raise AnsibleActionFail(
                "app_env: the connection does not pipeline, so the values in set would be "
                "written to a temporary file on the host; enable pipelining ([connection] "
                "pipelining = true, and a become method that supports it); nothing was changed"
            )
        return params

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        values = self._task.args.get("set")
        result = super().run(tmp, task_vars)
        return scrubbed(result, values.values() if isinstance(values, dict) else ())
