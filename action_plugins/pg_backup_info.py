# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/pg_backup_info.py, as action_plugins/pg_backup.py is of pg_backup.py:
the module's execute() in the task's worker on the controller's local connection."""

from __future__ import annotations

from ansible.plugins.loader import action_loader

ControllerModuleAction = action_loader.get("opsbook_controller_module", class_only=True)


class ActionModule(ControllerModuleAction):  # type: ignore[misc,valid-type]
    MODULE = "pg_backup_info"
