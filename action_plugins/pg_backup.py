# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/pg_backup.py: on the controller's local connection (the default
dbadmin host) the module's execute() runs in the task's worker process - no module process, no
payload (its arguments hold the DSN) - as for the controller modules (see
opsbook_controller_module.py). On any other connection it runs as an ordinary module."""

from __future__ import annotations

from ansible_collections.opsbook.runbooks.plugins.plugin_utils.opsbook_controller_module import (
    ControllerModuleAction,
)


class ActionModule(ControllerModuleAction):
    MODULE = "pg_backup"
