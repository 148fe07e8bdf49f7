"""Process, port and user helpers shared by the lab components.

Every lab server is tracked by a pid (a pid file on disk, so that another
process can stop what this one started) and torn down with SIGTERM, then
SIGKILL. A pid counts as gone once it no longer exists or is a zombie: the
machine's init may reap orphans lazily.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class LabError(RuntimeError):
    """A lab component failed to start, stop or load data."""


def component_error(
    component: str, what: str, log: Path | None = None, lines: int = 25
) -> LabError:
    """Build an error naming the component, what went wrong and the tail of its log."""
    message = f"{component}: {what}"
    if log is not None:
        message += f"\n--- last lines of {log} ---\n{log_tail(log, lines)}"
    return LabError(message)


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file, or a note that it is missing."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


# --------------------------------------------------------------------- ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on host right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll predicate until it is true or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------------- pids


def pid_alive(pid: int | None) -> bool:
    """True when pid exists and is not a zombie."""
    if not pid or pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    # The state follows the command name, which is in parentheses.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def read_pidfile(path: Path) -> int | None:
    """The pid in a pid file (first line), or None."""
    try:
        first = Path(path).read_text().split("\n", 1)[0].strip()
    except (FileNotFoundError, PermissionError):
        return None
    return int(first) if first.isdigit() else None


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(pid: int) -> list[int]:
    """All live descendants of pid (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for other in _all_pids():
        parent = _ppid(other)
        if parent is not None:
            children.setdefault(parent, []).append(other)
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return [p for p in found if pid_alive(p)]


def _protected_pids() -> set[int]:
    """This process and its ancestors: never killed by a sweep."""
    protected = {0, 1}
    pid: int | None = os.getpid()
    while pid and pid not in protected:
        protected.add(pid)
        pid = _ppid(pid)
    return protected


def processes_referencing(path: Path | str) -> list[int]:
    """Live processes whose command line or working directory is under path."""
    needle = str(path)
    protected = _protected_pids()
    found = []
    for pid in _all_pids():
        if pid in protected or not pid_alive(pid):
            continue
        try:
            cmdline = (
                Path(f"/proc/{pid}/cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        cwd = ""
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{pid}/cwd")
        if needle in cmdline or cwd == needle or cwd.startswith(needle + "/"):
            found.append(pid)
    return found


def signal_pids(pids: Iterable[int], sig: int) -> None:
    """Send sig to every pid, ignoring those already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every pid is gone; return those still alive."""
    pending = list(pids)
    wait_until(lambda: not any(pid_alive(p) for p in pending), timeout)
    return [p for p in pending if pid_alive(p)]


def terminate(pids: Iterable[int], timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Send sig (SIGTERM by default), then SIGKILL whatever outlives timeout."""
    pending = [p for p in pids if pid_alive(p)]
    if not pending:
        return
    signal_pids(pending, sig)
    survivors = wait_gone(pending, timeout)
    if survivors:
        signal_pids(survivors, signal.SIGKILL)
        wait_gone(survivors, 5.0)


def kill_hard(pids: Iterable[int]) -> None:
    """SIGKILL every pid and wait until they are gone."""
    pending = [p for p in pids if pid_alive(p)]
    signal_pids(pending, signal.SIGKILL)
    wait_gone(pending, 5.0)


def sweep(path: Path | str, timeout: float = 5.0) -> list[int]:
    """Terminate every process still referencing path; return their pids."""
    pids = processes_referencing(path)
    terminate(pids, timeout)
    return pids


# --------------------------------------------------------------------- users


@dataclass(frozen=True)
class RunAs:
    """The account a server runs as: the invoking user, or a system user when root."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def named(cls, name: str) -> RunAs:
        try:
            entry = pwd.getpwnam(name)
        except KeyError as exc:
            raise LabError(f"system user {name!r} does not exist") from exc
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    @classmethod
    def current(cls) -> RunAs:
        entry = pwd.getpwuid(os.geteuid())
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    @property
    def is_self(self) -> bool:
        return self.uid == os.geteuid()

    def popen_kwargs(self) -> dict[str, Any]:
        """subprocess arguments that drop to this user (nothing when it is us)."""
        if self.is_self:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """An environment for this user's processes."""
        env = dict(os.environ if base is None else base)
        if not self.is_self:
            env.update(HOME=self.home, USER=self.name, LOGNAME=self.name)
        return env

    def chown(self, *paths: Path) -> None:
        """Give paths to this user (only meaningful when we are root)."""
        if self.is_self:
            return
        for path in paths:
            os.chown(path, self.uid, self.gid)


def make_lab_dir(path: Path) -> Path:
    """Create path (and parents); make it searchable by others.

    Servers that run as another user (Postgres as `postgres` when we are root)
    must be able to traverse it; tempfile.mkdtemp() makes 0700 directories.
    """
    path.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode
    if not mode & 0o001:
        path.chmod((mode & 0o7777) | 0o711)
    return path


def current_user() -> str:
    """The login name of the effective user."""
    return pwd.getpwuid(os.geteuid()).pw_name
