# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/secret_store.py: on the controller the module's execute() runs in
the task's worker process (see opsbook_controller_module.py), and is handed the run's vault
secrets - the ones ansible-playbook was given with --vault-password-file / --vault-id - so that
the vault store decrypts and re-encrypts the inventory's vault file in memory. They never
leave this process: not a task argument, not a file, not a result.

A task with return_values=true must be no_log: the values would be shown and logged
otherwise; such a task is refused before anything is read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.opsbook.runbooks.plugins.plugin_utils.opsbook_controller_module import (
    ControllerModuleAction,
)


def run_vault_secrets(loader: Any) -> list[Any]:
    """The run's vault secrets: ansible-core's context (2.19), else the loader's vault."""
    try:
        from ansible.parsing.vault import VaultSecretsContext
    except ImportError:  # pragma: no cover - ansible-core before 2.19
        VaultSecretsContext = None
    if VaultSecretsContext is not None:
        context = VaultSecretsContext.current(optional=True)
        if context is not None and context.secrets:
            return list(context.secrets)
    vault = getattr(loader, "_vault", None)
    return list(getattr(vault, "secrets", None) or [])


class ActionModule(ControllerModuleAction):
    MODULE = "secret_store"

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        if boolean(self._task.args.get("return_values") or False, strict=False) and not (
            self._task.no_log
        ):
            raise AnsibleActionFail(
                "secret_store: return_values=true returns the secret's values: set no_log: "
                "true on the task; nothing was read"
            )
        return super().run(tmp, task_vars)

    def prepare(self, params: dict[str, Any], task_vars: Mapping[str, Any]) -> dict[str, Any]:
        params["_vault_secrets"] = run_vault_secrets(self._loader)
        return params
