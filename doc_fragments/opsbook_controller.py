# Copyright: opsbook contributors
# Apache-2.0
"""Documentation of the attributes the opsbook modules share that an action plugin of the same
name runs in the task's worker on the controller (plugin_utils/opsbook_controller_module.py):
extends_documentation_fragment: [opsbook.runbooks.opsbook_controller]. A module's own entry for
an attribute is merged over the fragment's, key by key (the Postgres ones say where they run and
what a diff would be)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
attributes:
  action:
    support: full
    description:
      - The action plugin of the same name (C(action_plugins/)) runs this module's code inside
        the task's worker on the controller's local connection - no module process, no payload
        (the module's arguments, secrets included) written to disk.
      - On any other connection the module runs the ordinary way, pipelined (opsbook's
        C(ansible.cfg)), so its arguments are never written to the host's disk either.
  diff_mode:
    support: none
    description: No diff is produced.
  platform:
    support: full
    platforms: posix
    description: Runs on the controller (C(delegate_to) C(localhost)).
"""
