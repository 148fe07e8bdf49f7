# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/jwt_probe.py: on the controller the module's execute() runs in the
task's worker process, not in a module process of its own (see opsbook_controller_module.py), so
the secret it signs with is never written into a module payload."""

from __future__ import annotations

from ansible_collections.opsbook.runbooks.plugins.plugin_utils.opsbook_controller_module import (
    ControllerModuleAction,
)


class ActionModule(ControllerModuleAction):
    MODULE = "jwt_probe"
