# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/pg_role_password.py, as action_plugins/pg_backup.py is of
pg_backup.py: on the controller's local connection (the default dbadmin host) the module's
execute() runs in the task's worker - no module process, and no payload holding the DSNs and
the password. On any other connection it runs as an ordinary module."""

from __future__ import annotations

from ansible_collections.opsbook.runbooks.plugins.plugin_utils.opsbook_controller_module import (
    ControllerModuleAction,
)


class ActionModule(ControllerModuleAction):
    MODULE = "pg_role_password"
