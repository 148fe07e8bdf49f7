# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/pg_restore.py: on the controller's local connection (the default
dbadmin host) the module's execute() runs in the task's worker process - no module process, no
payload (its arguments hold the DSN) - as for the controller modules (see
opsbook_controller_module.py). On any other connection it runs as an ordinary module."""

from __future__ import annotations

from ansible.plugins.loader import action_loader

ControllerModuleAction = action_loader.get("opsbook_controller_module", class_only=True)


class ActionModule(ControllerModuleAction):  # type: ignore[misc,valid-type]
    MODULE = "pg_restore"
