# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/http_check.py: on the controller the module's execute() runs in the
task's worker process, not in a module process of its own (see opsbook_controller_module.py):
health_check sends two checks per host, maintenance mode one per switch."""

from __future__ import annotations

from ansible.plugins.loader import action_loader

ControllerModuleAction = action_loader.get("opsbook_controller_module", class_only=True)


class ActionModule(ControllerModuleAction):  # type: ignore[misc,valid-type]
    MODULE = "http_check"
