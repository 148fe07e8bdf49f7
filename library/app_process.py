#!/usr/bin/python
# Copyright: opsbook contributors
# Apache-2.0
"""app_process: a small process supervisor (pid file) that starts the release `current` names."""

from __future__ import annotations

DOCUMENTATION = r"""
module: app_process
short_description: Start, stop or restart an app by pid file, on the release current points at
description:
  - A small process supervisor for hosts without systemd (the opsbook test hosts) or apps run
    outside it. The app is tracked by its pid file O(pidfile).
  - "O(state=restarted): the process in the pid file is sent O(stop_signal) (SIGTERM), then
    SIGKILL after O(timeout_s); when it led its own session (a daemon), every process left in
    that session is stopped the same way, so no worker that resolved the old C(current) can
    survive. Then O(command) is started and the module waits for a new live pid in the pid
    file."
  - "The new process runs the release C(current) points at B(when the restart begins): with
    O(resolve_current=true) each argument of O(command) under C(<deploy_root>/current) is
    rewritten to the release directory C(current) resolves to (C(releases/<id>/...)), so the
    process cannot pick up a link switched half-way, and its command line names its release. The
    restart holds the deploy root's lock (C(.opsbook/lock), the one M(opsbook.runbooks.app_release)
    takes), so
    C(current) cannot move during it. RV(release) is that directory; RV(verified) says the new
    process's command line names it."
  - "O(state=started) starts the app when the pid file names no live process. When it does and
    that process runs another release than C(current) (known from its command line), it is
    restarted (O(restart_stale)). O(state=stopped) stops it."
  - "O(detach=command) (the default) is for commands that daemonize themselves and write the
    pid file, like the sample app's C(app.py --detach): the module runs the command, which must
    exit 0 once the daemon is up. O(detach=module) is for commands that stay in the
    foreground: the module starts it in a new session with its output appended to O(log_file)
    and writes the pid file itself."
  - Python standard library only (runs on the app hosts' C(/usr/bin/python3)).
version_added: "0.1.0"
author:
  - opsbook maintainers (@opsbook)
options:
  state:
    description:
      - C(started), C(stopped) or C(restarted) (always a change).
    type: str
    required: true
    choices: [started, stopped, restarted]
  deploy_root:
    description:
      - The app's deploy root (C(current), C(releases/), C(shared/)).
    type: path
    required: true
  pidfile:
    description:
      - The pid file; C(<deploy_root>/shared/app.pid) when omitted.
    type: path
  command:
    description:
      - The command (argv) that starts the app; C([<python>, <deploy_root>/current/app.py,
        --detach]) when omitted (the opsbook sample app).
    type: list
    elements: str
  python:
    description:
      - The interpreter of the default O(command); the one running this module when omitted.
    type: str
  chdir:
    description:
      - Working directory of the started process; O(deploy_root) when omitted (never
        C(current) - a process must not hold on to an old release through its working
        directory).
    type: path
  environment:
    description:
      - Extra environment variables for the started process.
    type: dict
    default: {}
  detach:
    description:
      - C(command) - the command daemonizes itself and writes O(pidfile); C(module) - the
        module runs the command in the background and writes O(pidfile).
    type: str
    choices: [command, module]
    default: command
  log_file:
    description:
      - O(detach=module) - file the process's output is appended to;
        C(<deploy_root>/shared/app.log) when omitted.
    type: path
  resolve_current:
    description:
      - Rewrite arguments under C(<deploy_root>/current) to the release directory it points at
        (see the description).
    type: bool
    default: true
  restart_stale:
    description:
      - O(state=started) - restart a running process whose command line names another release
        than C(current).
    type: bool
    default: true
  stop_signal:
    description:
      - Signal asking the app to stop; SIGKILL follows after O(timeout_s).
    type: str
    default: TERM
    choices: [TERM, INT, QUIT, HUP, USR1, USR2]
  timeout_s:
    description:
      - Seconds to wait for the old process to exit, and for the new one to write its pid file.
    type: float
    default: 30
  lock_timeout_s:
    description:
      - Seconds to wait for the deploy root's lock (another opsbook run on the host).
    type: float
    default: 60
attributes:
  check_mode:
    support: full
    description: Reports what would be stopped or started (RV(old_pid), RV(release)); signals
      and starts nothing.
  diff_mode:
    description: No diff is produced.
    support: none
  action:
    support: full
    description: C(action_plugins/app_process.py) checks the arguments on the controller
      against this module's spec. The module itself runs on the host with the Python standard
      library only (no AnsiballZ), and refuses to run without its action plugin.
  platform:
    support: full
    platforms: linux
    description: Reads C(/proc) to find live processes, their sessions and command lines.
notes:
  - A pid file naming a dead process counts as not running. The pid is trusted as the app's;
    keep the pid file where only the app writes it.
  - On a host with systemd prefer a unit (role C(app_service), method C(systemd)); with
    C(KillMode=control-group) systemd gives the same guarantee for the old process.
seealso:
  - module: opsbook.runbooks.app_release
"""

EXAMPLES = r"""
- name: Restart the sample app on the release current points at
  app_process:
    deploy_root: /srv/app
    state: restarted
  register: restart

- name: Make sure the app runs (restarts it if it runs an older release)
  app_process:
    deploy_root: /srv/app
    state: started

- name: A foreground server, daemonized by the module
  app_process:
    deploy_root: /srv/app
    state: restarted
    detach: module
    command: [/srv/app/venv/bin/gunicorn, --chdir, /srv/app/current, app:wsgi]
    environment:
      PORT: "8080"
"""

RETURN = r"""
old_pid:
  description: The pid that was running before (null when none).
  returned: always
  type: int
  sample: 41230
new_pid:
  description: The pid of the process started (null when nothing was started).
  returned: always
  type: int
  sample: 41377
pid:
  description: The app's pid after the task (null when stopped).
  returned: always
  type: int
release:
  description: The release directory C(current) resolved to when the process was started (or
    would be, in check mode); null when nothing was started.
  returned: always
  type: str
  sample: /srv/app/releases/2.3.0-1a2b3c4d
release_id:
  description: The release C(current) points at.
  returned: always
  type: str
  sample: 2.3.0-1a2b3c4d
running_release:
  description: The release the running process's command line names (null when unknown).
  returned: always
  type: str
stopped_pids:
  description: Every pid that was stopped (the app and what was left in its session).
  returned: always
  type: list
  elements: int
verified:
  description: True when the new process's command line names RV(release); null when that
    cannot be told (O(resolve_current=false) or a command not under C(current)).
  returned: always
  type: bool
command:
  description: The argv started (after O(resolve_current)).
  returned: always
  type: list
  elements: str
msg:
  description: What happened.
  returned: always
  type: str
  sample: "restarted: pid 41230 stopped, pid 41377 runs /srv/app/releases/2.3.0-1a2b3c4d"
"""

import contextlib
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

STATE_DIR = ".opsbook"
LOCK_FILE = "lock"
KILL_WAIT_S = 5.0


class ProcessError(Exception):
    """The app could not be stopped or started; the message says what state it is in."""


# --------------------------------------------------------------------------- /proc


def read_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile) as handle:
            first = handle.readline().strip()
    except OSError:
        return None
    return int(first) if first.isdigit() and int(first) > 0 else None


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, session, ...)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def alive(pid: int | None) -> bool:
    """pid exists and is not a zombie."""
    if not pid:
        return False
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def session_of(pid: int) -> int | None:
    fields = proc_stat(pid)
    return int(fields[3]) if fields else None


def session_members(sid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit() and session_of(int(name)) == sid and alive(int(name)):
            members.append(int(name))
    return sorted(members)


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def protected_pids() -> set[int]:
    """This process and its ancestors: never signalled."""
    protected = {0, 1}
    pid = os.getpid()
    while pid and pid not in protected:
        protected.add(pid)
        fields = proc_stat(pid)
        pid = int(fields[1]) if fields else 0
    return protected


# --------------------------------------------------------------------------- supervisor


class Supervisor:
    def __init__(self, params: dict[str, Any], check_mode: bool) -> None:
        self.params = params
        self.check = check_mode
        self.root = os.path.abspath(params["deploy_root"])
        self.current = os.path.join(self.root, "current")
        self.releases = os.path.join(self.root, "releases")
        self.pidfile = params["pidfile"] or os.path.join(self.root, "shared", "app.pid")
        self.log_file = params["log_file"] or os.path.join(self.root, "shared", "app.log")
        self.timeout = float(params["timeout_s"])
        self.stop_signal = getattr(signal, "SIG" + params["stop_signal"])
        self.acted = False  # something was signalled or started (for a failure's `changed`)

    # ---- what runs where

    def current_release(self) -> tuple[str, str]:
        """(release directory, release id) `current` resolves to; ProcessError when it cannot."""
        if not os.path.islink(self.current) and not os.path.isdir(self.current):
            raise ProcessError(f"{self.current} does not exist: no release to run")
        target = os.path.realpath(self.current)
        if not os.path.isdir(target):
            raise ProcessError(f"{self.current} points at {target}, which does not exist")
        return target, os.path.basename(target)

    def running_release(self, pid: int) -> str | None:
        """The release id the process's command line names (None when it names none)."""
        prefix = os.path.realpath(self.releases) + os.sep
        for arg in cmdline(pid):
            for candidate in (arg, os.path.abspath(arg)):
                if candidate.startswith(prefix):
                    return candidate[len(prefix) :].split(os.sep, 1)[0]
        return None

    def command(self, release_dir: str) -> tuple[list[str], bool]:
        """(argv to start, whether an argument was rewritten to the release directory)."""
        argv = list(self.params["command"] or [])
        if not argv:
            python = self.params["python"] or sys.executable or "/usr/bin/python3"
            argv = [python, os.path.join(self.current, "app.py"), "--detach"]
        if not self.params["resolve_current"]:
            return argv, False
        rewritten = False
        out = []
        for arg in argv:
            if arg == self.current or arg.startswith(self.current + os.sep):
                arg = release_dir + arg[len(self.current) :]
                rewritten = True
            out.append(arg)
        return out, rewritten

    # ---- stop

    def stop(self, pid: int) -> list[int]:
        """Stop pid and, when it leads a session, everything left in that session."""
        protected = protected_pids()
        own_session = os.getsid(0)
        sid = session_of(pid)
        targets = [pid]
        if sid == pid and sid != own_session:
            targets = sorted(set(targets) | set(session_members(sid)))
        targets = [p for p in targets if p not in protected]
        self.acted = True
        self._signal(targets, self.stop_signal)
        survivors = self._wait_gone(targets, self.timeout)
        if sid == pid and sid != own_session:
            # Children the app forked while stopping, or that ignored the signal.
            late = [p for p in session_members(sid) if p not in protected and p not in targets]
            if late:
                self._signal(late, self.stop_signal)
                survivors += self._wait_gone(late, min(self.timeout, KILL_WAIT_S))
                targets += late
        if survivors:
            self._signal(survivors, signal.SIGKILL)
            still = self._wait_gone(survivors, KILL_WAIT_S)
            if still:
                raise ProcessError(
                    f"pids {still} survived SIGKILL; the app was not restarted (nothing started)"
                )
        if read_pid(self.pidfile) == pid:
            with contextlib.suppress(OSError):
                os.unlink(self.pidfile)
        return targets

    @staticmethod
    def _signal(pids: list[int], sig: int) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    @staticmethod
    def _wait_gone(pids: list[int], timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            left = [p for p in pids if alive(p)]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.05)

    # ---- start

    def start(self, argv: list[str], old_pid: int | None) -> int:
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (self.params["environment"] or {}).items()})
        chdir = self.params["chdir"] or self.root
        self.acted = True
        if self.params["detach"] == "module":
            return self._start_in_background(argv, env, chdir)
        # Output to a file, not a pipe: a daemon that keeps the pipe open cannot hang us.
        with tempfile.TemporaryFile() as output:
            try:
                result = subprocess.run(
                    argv,
                    cwd=chdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    timeout=self.timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise ProcessError(
                    f"{argv[0]} did not return within {self.timeout:.0f} s "
                    "(with detach=command it must daemonize and exit)"
                ) from exc
            except OSError as exc:
                raise ProcessError(f"cannot run {argv[0]}: {exc.strerror}") from exc
            output.seek(0)
            text = output.read().decode(errors="replace").strip()
        if result.returncode != 0:
            raise ProcessError(
                f"{' '.join(argv)} exited with {result.returncode}: {text[-2000:] or '(no output)'}"
            )
        pid = self._wait_pidfile(old_pid)
        if pid is None:
            raise ProcessError(
                f"{' '.join(argv)} exited 0 but {self.pidfile} names no new live process "
                f"after {self.timeout:.0f} s (output: {text[-500:] or 'none'})"
            )
        return pid

    def _wait_pidfile(self, old_pid: int | None) -> int | None:
        deadline = time.monotonic() + self.timeout
        while True:
            pid = read_pid(self.pidfile)
            if pid and pid != old_pid and alive(pid):
                return pid
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _start_in_background(self, argv: list[str], env: dict[str, str], chdir: str) -> int:
        os.makedirs(os.path.dirname(self.log_file), exist_ok=True)
        with open(self.log_file, "ab") as log:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=chdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise ProcessError(f"cannot run {argv[0]}: {exc.strerror}") from exc
        write_pidfile(self.pidfile, proc.pid)
        # A process that dies at once (bad config, port taken) fails the task.
        deadline = time.monotonic() + min(1.0, self.timeout)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.pidfile)
                raise ProcessError(
                    f"{' '.join(argv)} exited with {proc.returncode} right after starting "
                    f"(see {self.log_file})"
                )
            time.sleep(0.05)
        return proc.pid

    # ---- states

    def run(self) -> dict[str, Any]:
        state = self.params["state"]
        old_pid = read_pid(self.pidfile)
        if not alive(old_pid):
            old_pid = None
        running = self.running_release(old_pid) if old_pid else None
        result: dict[str, Any] = {
            "old_pid": old_pid,
            "new_pid": None,
            "pid": old_pid,
            "release": None,
            "release_id": None,
            "running_release": running,
            "stopped_pids": [],
            "verified": None,
            "command": [],
            "changed": False,
        }
        if state == "stopped":
            return self._stopped(result, old_pid)
        release_dir, release_id = self.current_release()
        result["release_id"] = release_id
        if state == "started" and old_pid:
            stale = running is not None and running != release_id
            if not (stale and self.params["restart_stale"]):
                result["msg"] = f"running: pid {old_pid}" + (
                    f" (release {running}; current is {release_id})" if stale else ""
                )
                return result
            reason = f"pid {old_pid} ran release {running}, current is {release_id}: "
        else:
            reason = ""
        return self._restart(result, old_pid, release_dir, release_id, reason)

    def _stopped(self, result: dict[str, Any], old_pid: int | None) -> dict[str, Any]:
        if not old_pid:
            result["msg"] = "not running"
            return result
        result["changed"] = True
        if self.check:
            result["msg"] = f"would stop pid {old_pid}"
            return result
        result["stopped_pids"] = self.stop(old_pid)
        result["pid"] = None
        result["msg"] = f"stopped pid {old_pid}"
        return result

    def _restart(
        self,
        result: dict[str, Any],
        old_pid: int | None,
        release_dir: str,
        release_id: str,
        reason: str,
    ) -> dict[str, Any]:
        argv, rewritten = self.command(release_dir)
        result.update(changed=True, release=release_dir, command=argv)
        verb = "restart" if old_pid else "start"
        if self.check:
            result["msg"] = f"{reason}would {verb} the app on {release_dir}"
            return result
        if old_pid:
            result["stopped_pids"] = self.stop(old_pid)
        new_pid = self.start(argv, old_pid)
        if os.path.realpath(self.current) != release_dir:
            raise ProcessError(
                f"{self.current} moved during the restart (to {os.path.realpath(self.current)}); "
                f"pid {new_pid} runs {release_dir}"
            )
        result.update(new_pid=new_pid, pid=new_pid, running_release=self.running_release(new_pid))
        if rewritten:
            result["verified"] = result["running_release"] == release_id
            if not result["verified"]:
                raise ProcessError(
                    f"pid {new_pid} (from {self.pidfile}) does not run {release_dir}: its command "
                    f"line is {' '.join(cmdline(new_pid))!r}"
                )
        stopped = f"pid {old_pid} stopped, " if old_pid else ""
        result["msg"] = f"{reason}{verb}ed: {stopped}pid {new_pid} runs {release_dir}"
        return result


def write_pidfile(path: str, pid: int) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(f"{pid}\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def deploy_lock(root: str, timeout_s: float):
    """The deploy root's lock (shared with app_release): current cannot move meanwhile."""
    state = os.path.join(root, STATE_DIR)
    os.makedirs(state, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(state, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise ProcessError(
                        f"another opsbook run holds {state}/{LOCK_FILE} (waited "
                        f"{timeout_s:.0f} s); the app was left as it was"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "state": {"type": "str", "required": True, "choices": ["started", "stopped", "restarted"]},
        "deploy_root": {"type": "path", "required": True},
        "pidfile": {"type": "path"},
        "command": {"type": "list", "elements": "str"},
        "python": {"type": "str"},
        "chdir": {"type": "path"},
        "environment": {"type": "dict", "default": {}},
        "detach": {"type": "str", "choices": ["command", "module"], "default": "command"},
        "log_file": {"type": "path"},
        "resolve_current": {"type": "bool", "default": True},
        "restart_stale": {"type": "bool", "default": True},
        "stop_signal": {
            "type": "str",
            "default": "TERM",
            "choices": ["TERM", "INT", "QUIT", "HUP", "USR1", "USR2"],
        },
        "timeout_s": {"type": "float", "default": 30.0},
        "lock_timeout_s": {"type": "float", "default": 60.0},
    }


def run(supervisor: Supervisor) -> dict[str, Any]:
    params = supervisor.params
    if supervisor.check or not os.path.isdir(supervisor.root):
        if not os.path.isdir(supervisor.root) and params["state"] != "stopped":
            raise ProcessError(f"deploy_root {supervisor.root} does not exist")
        return supervisor.run()
    with deploy_lock(supervisor.root, params["lock_timeout_s"]):
        return supervisor.run()


# ---------------------------------------------------------------- host side of the protocol
# Ansible puts the task's arguments here (a "jsonargs" module): they were already checked
# against argument_spec() on the controller by action_plugins/app_process.py.
ANSIBLE_ARGS = r"""<<INCLUDE_ANSIBLE_MODULE_JSON_ARGS>>"""


def host_params(raw: str, spec: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """(params, check_mode) from the JSON arguments; path options expanded here, on the host."""
    if raw.startswith("<<") or not json.loads(raw).get("_opsbook_checked"):
        raise SystemExit(
            exit_json(
                {
                    "failed": True,
                    "msg": "app_process runs through its action plugin "
                    "(action_plugins/app_process.py): add the project's action_plugins to "
                    "Ansible's action plugin path",
                }
            )
        )
    args = json.loads(raw)
    params: dict[str, Any] = {}
    for key, option in spec.items():
        value = args.get(key)
        if value is None:
            value = option.get("default")
        if value is not None and option.get("type") == "path":
            value = os.path.expanduser(os.path.expandvars(str(value)))
        params[key] = value
    return params, bool(args.get("_ansible_check_mode"))


def exit_json(result: dict[str, Any]) -> int:
    """Print the result for Ansible; the exit status (1 when failed)."""
    result.setdefault("changed", False)
    print(json.dumps(result, default=str))
    return 1 if result.get("failed") else 0


def main() -> int:
    params, check_mode = host_params(ANSIBLE_ARGS, argument_spec())
    if not os.path.isabs(params["deploy_root"]):
        return exit_json(
            {
                "failed": True,
                "msg": f"app_process: deploy_root must be absolute, got {params['deploy_root']!r}",
            }
        )
    if params["timeout_s"] <= 0:
        return exit_json({"failed": True, "msg": "app_process: timeout_s must be > 0"})
    supervisor = Supervisor(params, check_mode)
    try:
        result = run(supervisor)
    except (ProcessError, OSError) as exc:
        return exit_json(
            {
                "failed": True,
                "changed": supervisor.acted,
                "msg": f"app_process {params['state']}: {exc}",
            }
        )
    except Exception as exc:  # a report, not a traceback the controller cannot read
        return exit_json(
            {
                "failed": True,
                "changed": supervisor.acted,
                "msg": f"app_process {params['state']}: unexpected error {exc!r}",
            }
        )
    return exit_json(result)


if __name__ == "__main__":
    sys.exit(main())
