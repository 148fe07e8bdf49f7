# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/render_env.py: on the controller the module's execute()
runs in the task's worker process, not in a module process of its own (see
opsbook_controller_module.py) - its arguments, the token included, are never written to disk."""

from __future__ import annotations

from ansible_collections.opsbook.runbooks.plugins.plugin_utils.opsbook_controller_module import (
    ControllerModuleAction,
)


class ActionModule(ControllerModuleAction):
    MODULE = "render_env"
