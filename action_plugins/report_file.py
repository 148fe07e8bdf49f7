# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/report_file.py: on the controller the module's execute() runs in
the task's worker process, not in a module process of its own (see opsbook_controller_module.py)."""

from __future__ import annotations

from ansible_collections.opsbook.runbooks.plugins.plugin_utils.opsbook_controller_module import (
    ControllerModuleAction,
)


class ActionModule(ControllerModuleAction):
    MODULE = "report_file"
