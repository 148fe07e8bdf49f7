# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of app_service (library/app_service.py documents it): checks the inputs of
the method here, then runs one module on the host - app_process (supervisor),
ansible.builtin.systemd_service (systemd) or ansible.builtin.command (command)."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleActionFail
from ansible_collections.opsbook.runbooks.plugins.plugin_utils.opsbook_host_module import (
    HostModuleAction,
)


class ActionModule(HostModuleAction):
    MODULE = "app_service"

    def prepare(self, args: dict[str, Any], task_vars: dict[str, Any]) -> dict[str, Any]:
        params = self.validated(args)
        method, state = params["method"], params["state"]
        missing = {
            "supervisor": "deploy_root" if not params.get("deploy_root") else "",
            "systemd": "name (the unit)" if not params["name"] else "",
            "command": (
                "restart_command (an argv list)"
                if state == "restarted" and not params["restart_command"]
                else ""
            ),
        }[method]
        if missing:
            raise AnsibleActionFail(
                f"app_service: method {method} needs {missing}; the app was left as it was"
            )
        return params

    def run_on_host(
        self, params: dict[str, Any], task_vars: dict[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        del name
        method, state = params["method"], params["state"]
        base = {"method": method, "state": state}
        if method == "supervisor":
            process = self.validated(
                {
                    "deploy_root": params["deploy_root"],
                    "state": state,
                    "command": params["command"] or None,
                    "pidfile": params["pidfile"] or None,
                    "detach": params["detach"],
                    "environment": params["environment"],
                    "timeout_s": params["timeout_s"],
                },
                name="app_process",
            )
            result = super().run_on_host(process, task_vars, name="app_process")
            return {**base, **result}
        if method == "systemd":
            result = self._execute_module(
                module_name="ansible.builtin.systemd_service",
                module_args={
                    "name": params["name"],
                    "state": state,
                    "daemon_reload": params["daemon_reload"],
                },
                task_vars=task_vars,
            )
            result.setdefault("msg", f"unit {params['name']} {state}")
            return {**base, "unit": params["name"], **result}
        argv = params[{"restarted": "restart_command", "started": "start_command",
                       "stopped": "stop_command"}[state]]  # fmt: skip
        if not argv:
            return {**base, "changed": False, "msg": f"no command for state {state}"}
        if self._task.check_mode:
            return {**base, "changed": True, "msg": "would run " + " ".join(argv)}
        module_args: dict[str, Any] = {"argv": argv}
        if params.get("deploy_root"):
            module_args["chdir"] = params["deploy_root"]
        result = self._execute_module(
            module_name="ansible.builtin.command", module_args=module_args, task_vars=task_vars
        )
        if result.get("failed") or result.get("rc", 0) != 0:
            tail = (result.get("stderr") or result.get("stdout") or "").strip()[-500:]
            return {
                **base,
                **result,
                "failed": True,
                "changed": True,
                "msg": "app_service: {} exited {}{}".format(
                    " ".join(argv), result.get("rc"), f": {tail}" if tail else ""
                ),
            }
        return {**base, **result, "changed": True, "msg": "ran " + " ".join(argv)}
