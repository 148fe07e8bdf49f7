# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/app_process.py: validates the arguments on the controller (see
opsbook_host_module.py), then runs the stdlib-only module on the host."""

from __future__ import annotations

from ansible_collections.opsbook.runbooks.plugins.plugin_utils.opsbook_host_module import (
    HostModuleAction,
)


class ActionModule(HostModuleAction):
    MODULE = "app_process"
