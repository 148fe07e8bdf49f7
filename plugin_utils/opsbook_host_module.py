# Copyright: opsbook contributors
# Apache-2.0
"""The controller side of opsbook's host modules (app_release, app_process, app_service).

The modules that run on the app hosts on every deploy are plain Python files that use only the
standard library and take their arguments as JSON (Ansible's ``jsonargs`` module style), not
AnsiballZ modules. An AnsiballZ module compiles ``ansible.module_utils.basic`` and its
dependencies from its zip on every run: 0.19 CPU seconds for ``ping`` with the hosts' Python
3.11. ``app_release`` as a jsonargs module takes 0.07 CPU seconds a run. A deploy makes five
such runs on each host.

What AnsibleModule would do on the host is done here, on the controller, with Ansible's own
validator: the task's arguments are checked against the module's ``argument_spec()`` (read from
the module file itself, so the spec lives in one place), defaults are filled in, and a bad input
fails the task before anything runs on the host, naming the input and saying nothing was
changed. Paths (``type: path``) are passed as written and expanded on the host, where ``~``
means the remote user's home.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase

_SPECS: dict[str, dict[str, Any]] = {}

#: the collection the modules are in: a short name (app_release) is looked up there, so the
#: modules resolve the same from this project and from the installed collection
COLLECTION = "opsbook.runbooks"


def fqcn(name: str) -> str:
    """The module's fully qualified name (``opsbook.runbooks.app_release``)."""
    return name if "." in name else f"{COLLECTION}.{name}"


#: set on the arguments the host module receives from here; without it the module refuses
#: to run (it was called without its action plugin: nothing was validated)
CHECKED_KEY = "_opsbook_checked"


def controller_spec(spec: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The spec validated on the controller: paths are strings here and expanded on the host."""
    out: dict[str, dict[str, Any]] = {}
    for name, option in spec.items():
        option = dict(option)
        if option.get("type") == "path":
            option["type"] = "str"
        if isinstance(option.get("options"), Mapping):
            option["options"] = controller_spec(option["options"])
        out[name] = option
    return out


class HostModuleAction(ActionBase):
    """Validate the arguments of a stdlib-only host module here, then run it on the host."""

    #: the module file's short name (app_release, app_process, ...)
    MODULE: str = ""

    def module_spec(self, name: str | None = None) -> dict[str, dict[str, Any]]:
        """argument_spec() of the module file (loaded once per controller process)."""
        name = name or self.MODULE
        if name not in _SPECS:
            found = self._shared_loader_obj.module_loader.find_plugin_with_context(fqcn(name))
            if not found.resolved or not found.plugin_resolved_path:
                raise AnsibleActionFail(
                    f"{name}: the module file was not found in the library path"
                )
            spec = importlib.util.spec_from_file_location(
                f"_opsbook_host_module_{name}", found.plugin_resolved_path
            )
            if spec is None or spec.loader is None:
                raise AnsibleActionFail(f"{name}: cannot load {found.plugin_resolved_path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _SPECS[name] = module.argument_spec()
        return _SPECS[name]

    def validated(self, args: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
        """The task's arguments checked against the module's spec, with its defaults."""
        name = name or self.MODULE
        checked = ArgumentSpecValidator(controller_spec(self.module_spec(name))).validate(
            dict(args)
        )
        if checked.error_messages:
            raise AnsibleActionFail(
                "{}: invalid input: {}; nothing was changed".format(
                    name, "; ".join(str(m) for m in checked.error_messages)
                )
            )
        return dict(checked.validated_parameters)

    def run_on_host(
        self, params: Mapping[str, Any], task_vars: dict[str, Any], name: str | None = None
    ) -> dict[str, Any]:
        """Run the host module with arguments already validated."""
        return self._execute_module(
            module_name=fqcn(name or self.MODULE),
            module_args={**params, CHECKED_KEY: True},
            task_vars=task_vars,
        )

    def prepare(self, args: dict[str, Any], task_vars: dict[str, Any]) -> dict[str, Any]:
        """The module's arguments from the task's (a subclass may add work, e.g. a transfer)."""
        del task_vars
        return self.validated(args)

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        self._supports_check_mode = True
        self._supports_async = False
        result = super().run(tmp, task_vars)
        del tmp  # unused since Ansible 2.5
        task_vars = task_vars or {}
        try:
            params = self.prepare(dict(self._task.args), task_vars)
            result.update(self.run_on_host(params, task_vars))
        finally:
            if self._connection._shell.tmpdir:
                self._remove_tmp_path(self._connection._shell.tmpdir)
        return result
