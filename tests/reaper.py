"""Run a command as a child of a subreaper and report what outlived it.

    python tests/reaper.py GRACE_S -- COMMAND [ARGS...]

The command's own output goes to stderr. The process makes itself the child subreaper of
everything the command starts (Linux ``PR_SET_CHILD_SUBREAPER``): a process orphaned anywhere
below - a module whose Ansible worker died, a pg_dump whose module was SIGKILLed - is
reparented here instead of to PID 1. It prints ``pid <n>`` (the command's pid, for a test to
signal) on stdout, forwards SIGTERM and SIGINT to the command, waits for it, then waits up to
GRACE_S seconds for every descendant to end (reaping zombies), and prints one JSON line:
``{"rc", "left", "settled_s"}`` - ``left`` lists the processes still alive after the grace
period (``"<pid> <state> <command line>"``; they are then killed), ``settled_s`` how long
after the command's exit the last one ended. Exits 0.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def children(parent: int) -> list[tuple[int, str, str]]:
    """(pid, state, command line) of every process whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent:
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            found.append((int(entry.name), fields[0], cmdline.strip() or f"[{comm}]"))
    return found


def main(argv: list[str]) -> int:
    grace = float(argv[0])
    command = argv[argv.index("--") + 1 :]
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("reaper: PR_SET_CHILD_SUBREAPER failed")
    proc = subprocess.Popen(command, stdout=sys.stderr)  # stdout carries only this report
    print(f"pid {proc.pid}", flush=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda sig, _frame: proc.send_signal(sig))
    rc = proc.wait()
    ended = time.monotonic()
    me = os.getpid()
    settled = 0.0
    while True:
        alive = []
        for pid, state, cmdline in children(me):
            if state == "Z":
                os.waitpid(pid, 0)
            else:
                alive.append(f"{pid} {state} {cmdline}")
        if not alive:
            settled = time.monotonic() - ended
            break
        if time.monotonic() - ended > grace:
            break
        time.sleep(0.05)
    for line in alive:
        os.kill(int(line.split()[0]), signal.SIGKILL)
    print(json.dumps({"rc": rc, "left": alive, "settled_s": round(settled, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
