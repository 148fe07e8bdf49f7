# Copyright: opsbook contributors
# Apache-2.0
"""The controller side of opsbook's controller modules (deploy_lock, deploy_ledger, http_gate,
notify_webhook): on the controller, the module's code runs inside the task's worker process.

These modules always run on the controller (``delegate_to: localhost``). Run as AnsiballZ
modules, each task starts a new Python process that unpacks the module's zip and imports
``ansible.module_utils.basic`` (and boto3 for the deploy state): 0.4 to 0.6 s a task on the
2-core machine, 1.7 s of a 4-host rollback's 5 s. The task's worker is already a Python with
Ansible loaded: here the module's own code runs in it, about 0.1 s a task.

The module file stays the one source of its behaviour. Its ``argument_spec()`` is validated
with Ansible's own validator (as AnsibleModule would), then its ``execute(params, check_mode)``
runs - the function its ``main()`` calls when it runs as a module - and values of ``no_log``
options are removed from the result, as AnsibleModule does. The module's imports of
``ansible_collections.opsbook.runbooks.plugins.module_utils.*`` are found by Ansible's
collection loader, which this worker process already has.

A task that does not run on the controller's local connection (delegated to another host),
sets ``environment``, or runs ``async`` gets the module the ordinary way, as an AnsiballZ
module run by that connection.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible.plugins.action import ActionBase

_MODULES: dict[str, ModuleType] = {}

#: the collection the modules are in: a short name (deploy_lock) is looked up there, so the
#: modules resolve the same from this project and from the installed collection
COLLECTION = "opsbook.runbooks"


def fqcn(name: str) -> str:
    """The module's fully qualified name (``opsbook.runbooks.deploy_lock``)."""
    return name if "." in name else f"{COLLECTION}.{name}"


def import_module_file(name: str, path: str) -> ModuleType:
    """A module file, importable with the project's module_utils (as AnsiballZ ships them)."""
    if name in _MODULES:
        return _MODULES[name]
    spec = importlib.util.spec_from_file_location(f"_opsbook_controller_module_{name}", path)
    if spec is None or spec.loader is None:
        raise AnsibleActionFail(f"{name}: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and typing look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    _MODULES[name] = module
    return module


class ControllerModuleAction(ActionBase):
    """Run a controller module's execute() in this worker (see the module docstring)."""

    #: the module file's short name (deploy_lock, http_gate, ...)
    MODULE: str = ""

    def in_process(self) -> bool:
        """True when the task runs on the controller's own local connection, plainly."""
        return (
            getattr(self._connection, "transport", "") == "local"
            and not any(self._task.environment or [])  # [{}] when no task sets one
            and not self._task.async_val
        )

    def module(self) -> ModuleType:
        found = self._shared_loader_obj.module_loader.find_plugin_with_context(fqcn(self.MODULE))
        if not found.resolved or not found.plugin_resolved_path:
            raise AnsibleActionFail(f"{self.MODULE}: the module file was not found")
        return import_module_file(self.MODULE, found.plugin_resolved_path)

    def prepare(self, params: dict[str, Any], task_vars: Mapping[str, Any]) -> dict[str, Any]:
        """The module's parameters, validated (a subclass may fill in more)."""
        del task_vars
        return params

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        self._supports_check_mode = True
        self._supports_async = True
        result = super().run(tmp, task_vars)
        del tmp  # unused since Ansible 2.5
        task_vars = task_vars or {}
        if not self.in_process():
            result.update(
                self._execute_module(
                    module_name=fqcn(self.MODULE),
                    module_args=dict(self._task.args),
                    task_vars=task_vars,
                )
            )
            return result
        module = self.module()
        checked = ArgumentSpecValidator(module.argument_spec()).validate(dict(self._task.args))
        if checked.error_messages:
            raise AnsibleActionFail(
                "{}: invalid input: {}; nothing was changed".format(
                    self.MODULE, "; ".join(str(m) for m in checked.error_messages)
                )
            )
        params = self.prepare(dict(checked.validated_parameters), task_vars)
        try:
            outcome = module.execute(params, bool(self._task.check_mode))
        except Exception as exc:  # a report, as a module process would give, not a traceback
            outcome = {
                "failed": True,
                "changed": False,
                "msg": f"{self.MODULE}: unexpected error: {exc!r}",
                "exception": traceback.format_exc(),
            }
        outcome.setdefault("changed", False)
        result.update(remove_values(outcome, checked._no_log_values))
        return result
