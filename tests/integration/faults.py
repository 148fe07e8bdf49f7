"""Helpers of the fault tests (tests/integration/test_faults_*.py): a fault injected by a
watcher thread at the moment a condition holds, while the runbook runs in the test's thread;
a small tmpfs to fill (a full disk); the processes a killed run left (by their marker).

A fault test runs the real runbook with ``run_with_stats`` (blocking) and lets an
:class:`Injector` watch for the moment to strike - a COPY running in the scratch database,
a migration sleeping, bytes flowing through a proxy - then do it once. The test asserts the
injector fired, so a run that finished before the moment came fails instead of passing
vacuously.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.harness import wait_for

__all__ = ["Injector", "fill", "processes_with", "small_filesystem", "wait_for"]


class Injector:
    """Run ``action`` once, as soon as ``condition()`` is true (polled every 20 ms)."""

    def __init__(
        self, condition: Callable[[], Any], action: Callable[[], Any], timeout: float = 120.0
    ) -> None:
        self.condition = condition
        self.action = action
        self.timeout = timeout
        self.fired = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fault-injector", daemon=True)

    def __enter__(self) -> Injector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                ready = self.condition()
            except Exception:  # the server restarting, a file not there yet
                ready = False
            if ready:
                try:
                    self.action()
                except BaseException as exc:  # reported by check()
                    self.error = exc
                self.fired.set()
                return
            time.sleep(0.02)

    def check(self, output: str = "") -> None:
        """The fault was injected, without error (else the test proves nothing)."""
        assert self.error is None, f"injecting the fault failed: {self.error!r}"
        assert self.fired.is_set(), f"the moment to inject the fault never came:\n{output}"


@contextlib.contextmanager
def small_filesystem(path: Path, size_kib: int) -> Iterator[Path]:
    """A tmpfs of size_kib mounted at path (created), unmounted afterwards: a disk to fill.

    Needs CAP_SYS_ADMIN (the suite runs as root on the CI machine); fails loudly without it.
    """
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert mount.returncode == 0, (
        f"cannot mount a {size_kib} KiB tmpfs at {path} (the full-disk tests need root): "
        f"{mount.stderr.strip()}"
    )
    try:
        yield path
    finally:
        # lazy: a process of the lab may still hold a file there (it goes with the host)
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path, leave_bytes: int = 0) -> Path:
    """Fill directory's filesystem with one file, leaving about leave_bytes free."""
    filler = directory / "filler"
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    with open(filler, "wb", buffering=0) as handle:  # unbuffered: nothing left for close()
        remaining = max(free - leave_bytes, 0)
        block = b"\0" * 65536
        with contextlib.suppress(OSError):  # the last block may not fit: that is the point
            while remaining > 0:
                remaining -= handle.write(block[: min(len(block), remaining)])
    return filler


def free_bytes(directory: Path) -> int:
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def processes_with(marker: str) -> list[int]:
    """Pids whose environment holds OPSBOOK_TEST_MARKER=<marker> (not ssh masters)."""
    wanted = f"OPSBOOK_TEST_MARKER={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if wanted in environ and not cmdline.startswith(b"ssh"):
            found.append(int(entry.name))
    return found
