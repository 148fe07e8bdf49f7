# Copyright: opsbook contributors
# Apache-2.0
"""What every opsbook module's code needs of its run, in a module process or in the task's
worker (plugin_utils/opsbook_controller_module.py): its params and check mode, warnings to
return, and the one way ``main()`` turns ``execute()``'s result into the module's exit
(``run_module``: all a controller module's ``main()`` does)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class RunContext:
    """What a module's code needs of its run, whoever runs it - AnsibleModule in a module
    process, or an action plugin in the task's worker (action_plugins/
    opsbook_controller_module.py): the validated params, check mode, and warnings to return."""

    def __init__(self, params: dict[str, Any], check_mode: bool) -> None:
        self.params = params
        self.check_mode = check_mode
        self.warnings: list[str] = []

    def warn(self, text: str) -> None:
        self.warnings.append(text)


def finish_module(module: Any, result: dict[str, Any]) -> None:
    """Exit an AnsibleModule with a result built by ``execute()`` (warnings, failed)."""
    for warning in result.pop("warnings", None) or []:
        module.warn(warning)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


def run_module(
    argument_spec: dict[str, Any],
    execute: Callable[[dict[str, Any], bool], dict[str, Any]],
    **rules: Any,
) -> None:
    """The whole ``main()`` of a module whose code is ``execute(params, check_mode)`` (the
    controller modules, whose action plugin calls the same function): an AnsibleModule with
    check mode supported and ``rules`` (AnsibleModule's own ``required_if``,
    ``mutually_exclusive``, ...), then ``finish_module``."""
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, **rules)
    finish_module(module, execute(module.params, module.check_mode))
