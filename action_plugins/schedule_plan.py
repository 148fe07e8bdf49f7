# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/schedule_plan.py: on the controller the module's execute() runs in
the task's worker process, not in a module process of its own (see opsbook_controller_module.py)."""

from __future__ import annotations

from ansible.plugins.loader import action_loader

ControllerModuleAction = action_loader.get("opsbook_controller_module", class_only=True)


class ActionModule(ControllerModuleAction):  # type: ignore[misc,valid-type]
    MODULE = "schedule_plan"
