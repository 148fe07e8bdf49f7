# Copyright: opsbook contributors
# Apache-2.0
"""Child processes and stop signals: the one way every opsbook module handles them.

pg_backup (``pg_dump | zstd``), pg_restore (``zstd | pg_restore``, ``psql``) and the
fetch in opsbook_backup run client tools as child processes. What an interruption may
leave behind is decided here, once:

* ``stop_signals()``: SIGTERM, SIGINT and SIGHUP raise ``Interrupted`` in the module's
  main thread, so the module unwinds through its own cleanup (abort the upload, drop the
  scratch database, stop the children) and fails saying what it left. These are what an
  AWX cancel, a Ctrl-C, ``opsbook run --timeout`` and ansible-playbook's forwarding of
  its own SIGTERM/SIGINT to its workers' process groups deliver. Only the first stop
  signal raises; later ones are noted and ignored, so a cleanup is never cut short.
* ``spawn()``: a child that dies with the module: Linux ``PR_SET_PDEATHSIG`` sends it
  SIGKILL the moment the thread that started it is gone, even when the module itself is
  SIGKILLed. Call it from the main thread. No file descriptor is inherited.
* ``stop(procs, grace_s)``: SIGTERM, then SIGKILL after the grace period; always reaped.
* ``watch_ansible()``: a daemon thread that sends the module SIGTERM when the Ansible
  process that started it is gone (ansible-playbook SIGKILLed alone: its workers have
  sessions of their own and nobody else would tell the module to stop).
* ``tool_env(password)``: the environment of a libpq client tool: the password in that
  child's ``PGPASSWORD`` only, never in a file, on a command line or in a message.
* ``run_pipeline()``: ``a | b | c`` to completion, each stage's stderr kept in a file.

Modules import it as
``ansible_collections.opsbook.runbooks.plugins.module_utils.opsbook_proc``. Python standard library
only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
DEFAULT_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived: unwind through the cleanup, then fail.

    A KeyboardInterrupt, so that ``except Exception`` in the code it interrupts does not
    swallow it, and so that libraries treat it as they treat Ctrl-C: psycopg cancels the
    statement running on the server before it re-raises."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


# ---------------------------------------------------------------------------
# stop signals


class _StopState:
    raised: int | None = None  # the signal that raised Interrupted, once
    pending: int | None = None  # a signal that came while held, raised when the hold ends
    held = 0  # nesting depth of signals_held()
    ignored: list[int] = []  # noqa: RUF012 - process-wide, reset by stop_signals()


def _on_stop(signum: int, _frame: Any) -> None:
    if _StopState.raised is not None or _StopState.pending is not None:
        _StopState.ignored.append(signum)
        return
    if _StopState.held:
        _StopState.pending = signum
        return
    _StopState.raised = signum
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM/SIGINT/SIGHUP raise ``Interrupted`` (once) in the main thread meanwhile."""
    _StopState.raised = None
    _StopState.pending = None
    _StopState.held = 0
    _StopState.ignored = []
    previous = {sig: signal.signal(sig, _on_stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def interrupted_by() -> int | None:
    """The stop signal that interrupted this run, if one did."""
    return _StopState.raised


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold the stop signals while a cleanup runs; the first one that came meanwhile raises
    when it is done. (A flag, not a signal mask: with threads running, the kernel may
    deliver a signal to another thread, and Python runs the handler in the main thread
    whatever the main thread's mask.)"""
    _StopState.held += 1
    try:
        yield
    finally:
        _StopState.held -= 1
        if not _StopState.held and _StopState.pending is not None:
            signum, _StopState.pending = _StopState.pending, None
            if _StopState.raised is None:
                _StopState.raised = signum
                raise Interrupted(signum)


# ---------------------------------------------------------------------------
# children


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the signal cleanup still applies
        return None


_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """preexec function: the child gets SIGKILL when the thread that started it ends."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, ...)`` for a child that never outlives the module."""
    popen_kwargs.setdefault("close_fds", True)
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(list(argv), preexec_fn=die_with_parent, **popen_kwargs)


def stop(procs: Sequence[subprocess.Popen[Any]], grace_s: float = DEFAULT_GRACE_S) -> None:
    """SIGTERM every child still running, SIGKILL what is left after ``grace_s``; reap all.

    Never raises; never leaves a zombie. Streams the caller opened stay the caller's."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        with contextlib.suppress(OSError):
            proc.terminate()
    deadline = time.monotonic() + max(0.0, grace_s)
    for proc in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in running:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(timeout=30)


def tool_env(password: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a libpq client tool (pg_dump, pg_restore, psql).

    With a password (from the DSN): it is handed over in this child's ``PGPASSWORD``
    alone - no file holds it, no command line shows it - and wins over an inherited one.
    Without: the inherited environment as it is (the operator's password file, ``PGPASSWORD``,
    certificates: whatever the operator set up)."""
    env = dict(os.environ if base is None else base)
    if password is not None:
        env["PGPASSWORD"] = password
    return env


# ---------------------------------------------------------------------------
# the module dies with the Ansible process that started it


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, ...)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()


def _identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time): a pid that was reused by another process is not the same one."""
    fields = _stat_fields(pid)
    return (pid, fields[19]) if fields and len(fields) > 19 else None


def _parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields and len(fields) > 1 else None


SHELLS = frozenset((b"sh", b"bash", b"dash"))


def _kind(pid: int) -> str:
    """'ansible', 'shell' (how Ansible launches a module: ``/bin/sh -c ...``) or 'other'."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "other"
    names = [os.path.basename(arg) for arg in argv[:2]]
    if any(b"ansible" in name for name in names):
        return "ansible"
    return "shell" if names and names[0] in SHELLS else "other"


def ansible_ancestors(start: int | None = None) -> list[int]:
    """The module's parent and the ancestors above it up to the topmost Ansible process,
    through the shells Ansible launches a module with: ``[sh, sh, worker, ansible-playbook]``
    for a pipelined local run. Just ``[parent]`` where no Ansible process is above (a module
    run over SSH: its parent is sshd's shell)."""
    pid = os.getppid() if start is None else start
    chain: list[int] = []
    while pid > 1 and len(chain) < 32:
        kind = _kind(pid)
        if chain and kind == "other":
            break
        chain.append(pid)
        parent = _parent(pid)
        if parent is None:
            break
        pid = parent
    kinds = [_kind(p) for p in chain]
    if "ansible" not in kinds:
        return chain[:1]
    last = len(kinds) - 1 - kinds[::-1].index("ansible")
    return chain[: last + 1]


def watch_ansible(interval_s: float = 0.5) -> threading.Thread | None:
    """Send this process SIGTERM when any of its Ansible ancestors is gone (see above).

    Returns the daemon thread (None where /proc cannot tell). With ``stop_signals()``
    active, the module then unwinds through its cleanup as for any stop signal."""
    watched = [ident for pid in ansible_ancestors() if (ident := _identity(pid))]
    if not watched:
        return None
    me = os.getpid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if any(_identity(pid) != (pid, started) for pid, started in watched):
                with contextlib.suppress(OSError):
                    os.kill(me, signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="opsbook-watch-ansible", daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------
# pipelines


@dataclass
class StageResult:
    name: str
    returncode: int
    stderr: str


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return ""


def run_pipeline(
    stages: list[list[str]],
    env: dict[str, str],
    err_dir: Path,
    stdout_path: Path | None = None,
    grace_s: float = DEFAULT_GRACE_S,
) -> list[StageResult]:
    """Run ``stages[0] | stages[1] | ...`` and wait for all; on any exception (a stop
    signal included) stop and reap them before it propagates.

    stderr of every stage goes to a file in ``err_dir`` (no pipe that can fill up);
    the last stage's stdout goes to ``stdout_path`` (or nowhere).
    """
    procs: list[subprocess.Popen[bytes]] = []
    err_paths: list[Path] = []
    try:
        upstream: Any = None
        for index, argv in enumerate(stages):
            err_path = err_dir / f"{index}-{Path(argv[0]).name}.stderr"
            err_paths.append(err_path)
            with contextlib.ExitStack() as files:
                err = files.enter_context(open(err_path, "wb"))
                out: Any = subprocess.PIPE
                if index == len(stages) - 1:
                    out = subprocess.DEVNULL
                    if stdout_path is not None:
                        out = files.enter_context(open(stdout_path, "wb"))
                proc = spawn(
                    argv,
                    stdin=upstream if upstream is not None else subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=env,
                )
            procs.append(proc)
            if upstream is not None:
                upstream.close()  # the child holds its own end of the pipe
            upstream = proc.stdout
        for proc in reversed(procs):
            proc.wait()
        return [
            StageResult(Path(argv[0]).name, proc.returncode, _read_text(path))
            for argv, proc, path in zip(stages, procs, err_paths, strict=True)
        ]
    finally:
        with signals_held():
            stop(procs, grace_s)
        for proc in procs:
            if proc.stdout is not None:
                proc.stdout.close()
