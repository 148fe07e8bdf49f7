# Copyright: opsbook contributors
# Apache-2.0
"""Controller side of library/app_release.py: validates the arguments (see
opsbook_host_module.py) and, for action=install with src, sends the archive from the
controller into the task's temporary directory on the host (one transfer: no stat, no copy
module); the module checks its sha256, unpacks it and deletes it."""

from __future__ import annotations

import os
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible_collections.opsbook.runbooks.plugins.plugin_utils.opsbook_host_module import (
    HostModuleAction,
)


class ActionModule(HostModuleAction):
    MODULE = "app_release"

    def prepare(self, args: dict[str, Any], task_vars: dict[str, Any]) -> dict[str, Any]:
        src = args.pop("src", None)
        params = self.validated(args)
        if src is None:
            return params
        if params["action"] != "install":
            raise AnsibleActionFail(
                "app_release: src is only for action=install; nothing was changed"
            )
        if params.get("archive"):
            raise AnsibleActionFail(
                "app_release: give src (an archive on the controller) or archive (one on the "
                "host), not both; nothing was changed"
            )
        local = os.path.expanduser(str(src))
        if not os.path.isfile(local):
            raise AnsibleActionFail(
                f"app_release: src {local} is not a file on the controller; nothing was changed"
            )
        if self._task.check_mode:
            # Nothing is sent in check mode: the module reports what it would install.
            params["archive"] = f"(not sent in check mode) {local}"
        else:
            tmpdir = self._connection._shell.tmpdir or self._make_tmp_path()
            remote = self._connection._shell.join_path(tmpdir, "release-archive")
            self._transfer_file(local, remote)
            self._fixup_perms2((tmpdir, remote))
            params["archive"] = remote
        params["remove_archive"] = True
        return params
