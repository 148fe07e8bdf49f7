# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/pg_role_password.py, as action_plugins/pg_backup.py is of
pg_backup.py: on the controller's local connection (the default dbadmin host) the module's
execute() runs in the task's worker - no module process, and no payload holding the DSNs and
the password. On any other connection it runs as an ordinary module."""

from __future__ import annotations

from ansible.plugins.loader import action_loader

ControllerModuleAction = action_loader.get("opsbook_controller_module", class_only=True)


class ActionModule(ControllerModuleAction):  # type: ignore[misc,valid-type]
    MODULE = "pg_role_password"
