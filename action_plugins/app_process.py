# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/app_process.py: validates the arguments on the controller (see
opsbook_host_module.py), then runs the stdlib-only module on the host."""

from __future__ import annotations

from ansible.plugins.loader import action_loader

HostModuleAction = action_loader.get("opsbook_host_module", class_only=True)


class ActionModule(HostModuleAction):  # type: ignore[misc,valid-type]
    MODULE = "app_process"
