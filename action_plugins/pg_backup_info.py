# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/pg_backup_info.py, as action_plugins/pg_backup.py is of pg_backup.py:
the module's execute() in the task's worker on the controller's local connection."""

from __future__ import annotations

from ansible_collections.opsbook.runbooks.plugins.plugin_utils.opsbook_controller_module import (
    ControllerModuleAction,
)


class ActionModule(ControllerModuleAction):
    MODULE = "pg_backup_info"
