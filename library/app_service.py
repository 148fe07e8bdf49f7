#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""app_service: start, restart or stop the app with its method (runs as an action plugin)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: app_service
short_description: Start, restart or stop the app so that it runs the release current points at
description:
  - "One task for the three ways an app is run: O(method=supervisor) runs the module
    M(opsbook.runbooks.app_process) on the host (a pid file: the old process and what is left of its
    session
    are stopped, the new one is started on the release C(current) resolves to, and checked to
    run it); O(method=systemd) runs C(ansible.builtin.systemd_service) on the unit O(name);
    O(method=command) runs your argv for the state asked (no shell)."
  - "Runs as an action plugin (C(action_plugins/app_service.py)) that validates the inputs of
    the method on the controller and then runs one module on the host: a restart in a deploy
    is one task per host."
  - "With C(systemd), make the unit start the app from C(<deploy_root>/current) (ExecStart and
    WorkingDirectory are resolved when the unit starts) and keep C(KillMode=control-group):
    a restart then stops every process of the old release."
version_added: "0.1.0"
author:
  - opsbook maintainers (@opsbook)
options:
  method:
    description: How the app is run (the inventory's C(app_service_method)).
    type: str
    default: supervisor
    choices: [supervisor, systemd, command]
  state:
    description: The state to bring the app to.
    type: str
    default: started
    choices: [started, restarted, stopped]
  deploy_root:
    description:
      - The app's deploy root on the host. Required by O(method=supervisor); the working
        directory of O(method=command).
    type: path
  command:
    description: supervisor - argv starting the app; empty means the opsbook sample app
      (C([<host python>, <deploy_root>/current/app.py, --detach])).
    type: list
    elements: str
    default: []
  pidfile:
    description: supervisor - the pid file; empty means C(<deploy_root>/shared/app.pid).
    type: str
    default: ""
  detach:
    description: supervisor - C(command) daemonizes itself and writes the pid file; C(module)
      runs in the foreground and the supervisor puts it in the background.
    type: str
    default: command
    choices: [command, module]
  environment:
    description: supervisor - extra environment variables of the app process.
    type: dict
    default: {}
  timeout_s:
    description: supervisor - seconds to wait for the old process to exit (then SIGKILL) and
      the new one to start.
    type: float
    default: 30
  name:
    description: systemd - the unit. Required by O(method=systemd).
    type: str
    default: ""
  daemon_reload:
    description: systemd - run C(systemctl daemon-reload) first (after a unit file changed).
    type: bool
    default: false
  restart_command:
    description: command - argv run for O(state=restarted). Required by O(method=command)
      with O(state=restarted).
    type: list
    elements: str
    default: []
  start_command:
    description: command - argv run for O(state=started); empty runs nothing (a command cannot
      tell whether the app already runs).
    type: list
    elements: str
    default: []
  stop_command:
    description: command - argv run for O(state=stopped); empty runs nothing.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: supervisor reports what it would stop and start; systemd asks systemd;
      command reports the argv it would run and runs nothing.
  action:
    support: full
    description: Runs as an action plugin on the controller, then one module on the host.
notes:
  - Use C(become) on the task for a systemd unit that needs root.
seealso:
  - module: opsbook.runbooks.app_process
  - module: opsbook.runbooks.app_release
"""

EXAMPLES = r"""
- name: Restart the app after switching current (pid file supervisor, no systemd)
  app_service:
    method: supervisor
    state: restarted
    deploy_root: /srv/app

- name: Restart the systemd unit
  app_service:
    method: systemd
    state: restarted
    name: app.service
  become: true

- name: Restart through your own control command
  app_service:
    method: command
    state: restarted
    deploy_root: /srv/app
    restart_command: [/usr/local/bin/app-ctl, restart]
"""

RETURN = r"""
method:
  description: The method used.
  returned: always
  type: str
state:
  description: The state asked.
  returned: always
  type: str
msg:
  description: What was done.
  returned: always
  type: str
old_pid:
  description: supervisor - the process stopped (null when none ran).
  returned: when method is supervisor
  type: int
pid:
  description: supervisor - the process running now (null after stopped).
  returned: when method is supervisor
  type: int
release:
  description: supervisor - the release directory the running process was started from.
  returned: when method is supervisor
  type: str
unit:
  description: systemd - the unit.
  returned: when method is systemd
  type: str
rc:
  description: command - the exit status of the command run.
  returned: when method is command and a command ran
  type: int
"""

from typing import Any


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "method": {
            "type": "str",
            "default": "supervisor",
            "choices": ["supervisor", "systemd", "command"],
        },
        "state": {
            "type": "str",
            "default": "started",
            "choices": ["started", "restarted", "stopped"],
        },
        "deploy_root": {"type": "path"},
        "command": {"type": "list", "elements": "str", "default": []},
        "pidfile": {"type": "str", "default": ""},
        "detach": {"type": "str", "default": "command", "choices": ["command", "module"]},
        "environment": {"type": "dict", "default": {}},
        "timeout_s": {"type": "float", "default": 30.0},
        "name": {"type": "str", "default": ""},
        "daemon_reload": {"type": "bool", "default": False},
        "restart_command": {"type": "list", "elements": "str", "default": []},
        "start_command": {"type": "list", "elements": "str", "default": []},
        "stop_command": {"type": "list", "elements": "str", "default": []},
    }


def main() -> None:
    import json
    import sys

    print(json.dumps({"failed": True, "msg": "app_service runs as an action plugin "
                      "(action_plugins/app_service.py), not on the host"}))  # fmt: skip
    sys.exit(1)


if __name__ == "__main__":
    main()
