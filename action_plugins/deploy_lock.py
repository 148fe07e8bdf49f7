# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/deploy_lock.py: on the controller the module's execute() runs in
the task's worker process, not in a module process of its own (see
opsbook_controller_module.py). A lock taken here records the ansible-playbook process (the
worker's parent) as its holder, so that a later run can tell a crashed run's lock."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ansible_collections.opsbook.runbooks.plugins.plugin_utils.opsbook_controller_module import (
    ControllerModuleAction,
)


class ActionModule(ControllerModuleAction):
    MODULE = "deploy_lock"

    def prepare(self, params: dict[str, Any], task_vars: Mapping[str, Any]) -> dict[str, Any]:
        if params.get("holder_pid") is None and params.get("state") == "present":
            params["holder_pid"] = os.getppid()  # the worker's parent: ansible-playbook
        return params
