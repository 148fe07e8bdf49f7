"""A run you can watch and stop: :func:`opsbook.start` returns a :class:`RunHandle`.

    handle = opsbook.start("backup", "staging", reason="before the migration")
    for event in handle.events():          # or: async for event in handle
        print(event["event"], event["host"], event["status"])
    result = handle.wait()                 # the RunResult opsbook.run() returns
                                           # or: result = await handle

The run itself is the one ``opsbook.run()`` and ``opsbook run`` make
(:meth:`opsbook.runner.RunbookRunner.execute`): same private data directory, same masking,
same operation log, same stop. ``start()`` runs it in a thread of its own, so a web app or a
chat bot streams and cancels it without one; ``opsbook.run()`` is the same handle run in the
calling thread (which, when it is the main thread, also makes SIGINT and SIGTERM cancel it).

Events: one dict per ansible-runner event, as it happens, with a small stable set of keys
(:func:`event_record`), built from the event *after* the run's masking: what the run knows to
be secret is ``********`` here as in the artifacts. ``opsbook run --json`` prints the same
dicts, one a line, then :func:`result_record` of the result.

Status: ``starting`` (until ansible-playbook is started), ``running``, ``canceling`` (once
:meth:`RunHandle.cancel` was asked, until the run has stopped), then the result's own status:
``successful``, ``failed``, ``unreachable``, ``timeout`` or ``canceled``; ``error`` when opsbook
itself raised (:meth:`RunHandle.wait` raises it again).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opsbook.runner import (
    STOP_GRACE_S,
    CancelCallback,
    EventHandler,
    StatusHandler,
    result_message,
    strip_ansi,
)

if TYPE_CHECKING:
    import asyncio

    from opsbook.runner import RunbookRunner, RunPlan, RunResult

log = logging.getLogger("opsbook")

#: the engine of a handle: execute(event_handler, cancel_callback, status_handler) -> RunResult
Execute = Callable[[EventHandler, CancelCallback, StatusHandler], "RunResult"]

STARTING, RUNNING, CANCELING, ERROR = "starting", "running", "canceling", "error"
#: the statuses of a run that ended (RunResult.status, or ERROR)
FINAL_STATUSES = frozenset({"successful", "failed", "unreachable", "timeout", "canceled", ERROR})

EVENT_KEYS = (
    "type", "event", "counter", "uuid", "created", "play", "task", "action", "host", "status",
    "msg", "stdout",
)  # fmt: skip
_HOST_STATUS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
    "runner_retry": "retrying",
    "runner_on_start": "started",
}
_DEBUG_ACTIONS = frozenset({"debug", "ansible.builtin.debug", "ansible.legacy.debug"})


# --- records ---------------------------------------------------------------------------------
def event_record(event: Mapping[str, Any]) -> dict[str, Any]:
    """The stable, JSON-ready form of one (already masked) ansible-runner event.

    Keys, always all present (None or "" when the event has none):
    ``type`` ("event"), ``event`` (runner's name: playbook_on_start, playbook_on_play_start,
    playbook_on_task_start, runner_on_start, runner_on_ok, runner_on_failed,
    runner_on_unreachable, runner_on_skipped, runner_retry, verbose, playbook_on_stats, ...),
    ``counter`` (1, 2, ... in the run's order), ``uuid``, ``created`` (ISO time), ``play``,
    ``task``, ``action`` (the module), ``host``, ``status`` (host events only: started, ok,
    changed, failed, ignored, unreachable, skipped, retrying), ``msg`` (a failed or unreachable
    host's message; what a debug task printed: a runbook's report) and ``stdout`` (Ansible's
    own lines for the event, without colors or carriage returns).
    """
    kind = str(event.get("event") or "")
    data = event.get("event_data")
    data = data if isinstance(data, Mapping) else {}
    res = data.get("res")
    status = _HOST_STATUS.get(kind)
    msg = ""
    if kind == "runner_on_ok" and isinstance(res, Mapping):
        if res.get("changed"):
            status = "changed"
        if data.get("task_action") in _DEBUG_ACTIONS and res.get("msg") is not None:
            shown = res["msg"]
            msg = "\n".join(map(str, shown)) if isinstance(shown, list) else str(shown)
    elif kind == "runner_on_failed":
        status = "ignored" if data.get("ignore_errors") else "failed"
        msg = result_message(res)
    elif kind == "runner_on_unreachable":
        msg = result_message(res)
    play = data.get("play") or (data.get("name") if kind == "playbook_on_play_start" else None)
    return {
        "type": "event",
        "event": kind,
        "counter": event.get("counter"),
        "uuid": event.get("uuid"),
        "created": event.get("created"),
        "play": _text(play),
        "task": _text(data.get("task")),
        "action": _text(data.get("task_action")),
        "host": _text(data.get("host")),
        "status": status,
        "msg": _lines(msg),
        "stdout": _lines(str(event.get("stdout") or "")),
    }


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else strip_ansi(str(value))


def _lines(text: str) -> str:
    """Plain lines: no colors, no carriage returns (Ansible writes to a pty), no blank
    lines around."""
    return strip_ansi(text).replace("\r\n", "\n").replace("\r", "\n").strip("\n")


def result_record(result: RunResult) -> dict[str, Any]:
    """The JSON-ready form of a RunResult: ``type`` ("result"), ``runbook``, ``env``,
    ``ident``, ``status``, ``rc`` (the exit code of ``opsbook run``), ``verdict``, ``check``,
    ``limit``, ``duration_s``, ``stats`` (per host), ``outputs`` (what the runbook published
    with set_stats), ``failures``, ``errors``, ``warnings``, ``artifacts_dir``."""
    return {
        "type": "result",
        "runbook": result.runbook,
        "env": result.env,
        "ident": result.ident,
        "status": result.status,
        "rc": result.rc,
        "verdict": result.verdict,
        "check": result.check,
        "limit": result.limit,
        "duration_s": result.duration_s,
        "stats": result.stats,
        "outputs": result.outputs,
        "failures": result.failures,
        "errors": result.errors,
        "warnings": result.warnings,
        "artifacts_dir": str(result.artifacts_dir),
    }


# --- runs that outlive their program ----------------------------------------------------------
_LIVE: set[RunHandle] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _cancel_at_exit() -> None:
    """The program ends (normally, or on an uncaught exception) while runs it started go on:
    cancel them as Ctrl-C would and wait for their cleanup (their processes cannot outlive
    this one cleanly: the pty ansible-playbook runs on closes with it)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for handle in live:
        handle.cancel()
    for handle in live:
        with contextlib.suppress(BaseException):
            handle.wait(timeout=STOP_GRACE_S + 5)


# --- the handle ------------------------------------------------------------------------------
class RunHandle:
    """One run of a runbook: its events as they happen, its status, a way to stop it, its
    result. Made by :func:`opsbook.start` (or :meth:`RunbookRunner.start`); every method may be
    called from any thread, the async ones from any event loop."""

    def __init__(
        self,
        execute: Execute,
        *,
        runbook: str,
        env: str,
        event_handler: EventHandler | None = None,
        cancel_callback: CancelCallback | None = None,
    ) -> None:
        self.runbook = runbook
        self.env = env
        #: the run's id (its directory under the runs dir), known once the run has begun
        self.ident: str | None = None
        self._execute = execute
        self._user_handler = event_handler
        self._user_cancel = cancel_callback
        self._cond = threading.Condition()
        self._events: list[dict[str, Any]] = []
        self._status = STARTING
        self._history = [STARTING]
        self._cancel_requested = False
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._finished = False
        self._wakers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._started = False
        self._interrupted = False

    @classmethod
    def for_plan(
        cls,
        runner: RunbookRunner,
        plan: RunPlan,
        *,
        event_handler: EventHandler | None = None,
        cancel_callback: CancelCallback | None = None,
    ) -> RunHandle:
        """A handle (not started yet) that runs ``plan`` with ``runner``."""

        def execute(
            on_event: EventHandler, should_cancel: CancelCallback, on_status: StatusHandler
        ) -> RunResult:
            return runner.execute(
                plan, event_handler=on_event, cancel_callback=should_cancel,
                status_handler=on_status,
            )  # fmt: skip

        return cls(
            execute, runbook=plan.runbook.name, env=plan.env,
            event_handler=event_handler, cancel_callback=cancel_callback,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"<RunHandle {self.runbook} on {self.env} {self.ident or ''} {self.status}>"

    # --- starting ------------------------------------------------------------------------
    def start(self) -> RunHandle:
        """Run in a thread of its own; returns at once. A handle runs once. A program that
        ends while the run goes on cancels it at exit, and waits for its cleanup."""
        self._claim()
        with _LIVE_LOCK:
            _LIVE.add(self)
        thread = threading.Thread(target=self._run, name=f"opsbook-run-{self.runbook}")
        thread.daemon = True  # not joined before atexit: _cancel_at_exit stops it first
        thread.start()
        return self

    def run_here(self) -> RunHandle:
        """Run in the calling thread, until the run has ended (what ``opsbook.run`` does)."""
        self._claim()
        self._run()
        return self

    def _claim(self) -> None:
        with self._cond:
            if self._started:
                raise RuntimeError("a run handle runs once")
            self._started = True

    def _run(self) -> None:
        result: RunResult | None = None
        error: BaseException | None = None
        try:
            result = self._execute(self._on_event, self._should_cancel, self._on_status)
        except BaseException as exc:  # handed to wait(), which raises it again
            error = exc
        with self._cond:
            self._result, self._error = result, error
            self._finished = True
            if result is not None and self.ident is None:
                self.ident = result.ident
            self._set_status(result.status if result is not None else ERROR)
            self._notify()
        with _LIVE_LOCK:
            _LIVE.discard(self)

    # --- engine callbacks ----------------------------------------------------------------
    def _on_status(self, data: Mapping[str, Any]) -> None:
        with self._cond:
            if data.get("runner_ident") and self.ident is None:
                self.ident = str(data["runner_ident"])
            if data.get("status") == RUNNING and self._status == STARTING:
                self._set_status(RUNNING)

    def _on_event(self, event: dict[str, Any]) -> None:
        try:
            record = event_record(event)
        except Exception:  # never lose the run over a record: keep its ids
            log.exception("opsbook: could not make a record of a runner event")
            record = dict.fromkeys(EVENT_KEYS)
            record.update(type="event", event=event.get("event"), counter=event.get("counter"))
        with self._cond:
            self._events.append(record)
            self._notify()
        if self._user_handler is not None:
            self._user_handler(event)  # its exceptions: the run warns once and goes on

    def _should_cancel(self) -> bool:
        if self._cancel_requested:
            return True
        return bool(self._user_cancel is not None and self._user_cancel())

    def _set_status(self, status: str) -> None:  # with self._cond held
        if status != self._status:
            self._status = status
            self._history.append(status)

    def _notify(self) -> None:  # with self._cond held
        self._cond.notify_all()
        for loop, waker in list(self._wakers):
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(waker.set)

    # --- state -----------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """starting, running, canceling, then successful, failed, unreachable, timeout,
        canceled (the result's status), or error."""
        with self._cond:
            return self._status

    @property
    def status_history(self) -> list[str]:
        """Every status the run has had, in order."""
        with self._cond:
            return list(self._history)

    @property
    def done(self) -> bool:
        """True once the run has ended (its processes gone, its artifacts masked)."""
        with self._cond:
            return self._finished

    @property
    def result(self) -> RunResult | None:
        """The RunResult once the run has ended, else None."""
        with self._cond:
            return self._result

    # --- stopping --------------------------------------------------------------------------
    def cancel(self) -> bool:
        """Stop the run the way Ctrl-C does: SIGTERM to ansible-playbook within half a
        second, the runbook's modules clean up, what is left after 10 s is killed; the result
        says ``canceled``. Returns at once (``wait()`` for the end); False when the run had
        already ended."""
        with self._cond:
            if self._finished:
                return False
            if not self._cancel_requested:
                self._cancel_requested = True
                self._set_status(CANCELING)
            return True

    # --- waiting ---------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> RunResult:
        """The RunResult, once the run has ended; TimeoutError if it has not within
        ``timeout`` seconds (the run goes on). Ctrl-C while waiting in the main thread
        cancels the run, and the wait goes on to its (canceled) result; a second one raises.
        Raises what opsbook itself raised when the status is ``error``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            with self._interrupt_cancels(), self._cond:
                while not self._finished:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"the run of {self.runbook} is still {self._status}")
                    self._cond.wait(left)
        return self._outcome()

    def _outcome(self) -> RunResult:
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def events(self) -> Iterator[dict[str, Any]]:
        """Every event of the run (see :func:`event_record`), from the first, as they happen;
        ends when the run has ended. Each call iterates again from the first event. Ctrl-C
        while iterating in the main thread cancels the run (see :meth:`wait`)."""
        index = 0
        while True:
            batch: list[dict[str, Any]] = []
            finished = False
            with self._interrupt_cancels(), self._cond:
                while index >= len(self._events) and not self._finished:
                    self._cond.wait()
                batch = self._events[index:]
                finished = self._finished
            index += len(batch)
            yield from batch
            if finished and index >= len(self._events):
                return

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.events()

    @contextlib.contextmanager
    def _interrupt_cancels(self) -> Iterator[None]:
        """A first KeyboardInterrupt cancels the run and is absorbed; a second one raises."""
        try:
            yield
        except KeyboardInterrupt:
            if self._interrupted or not self.cancel():
                raise
            self._interrupted = True
            log.debug("opsbook: interrupted: canceling run %s", self.ident)

    # --- asyncio ---------------------------------------------------------------------------
    async def aevents(self) -> AsyncIterator[dict[str, Any]]:
        """:meth:`events` for asyncio: never blocks the event loop."""
        index = 0
        waker = self._add_waker()
        try:
            while True:
                with self._cond:
                    batch = self._events[index:]
                    finished = self._finished
                    waker[1].clear()  # under the lock: a later event sets it again
                index += len(batch)
                for record in batch:
                    yield record
                if batch:
                    continue
                if finished:
                    return
                await waker[1].wait()
        finally:
            self._remove_waker(waker)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self.aevents()

    async def wait_async(self, timeout: float | None = None) -> RunResult:
        """:meth:`wait` for asyncio: never blocks the event loop; TimeoutError after
        ``timeout`` seconds (the run goes on)."""
        import asyncio

        waker = self._add_waker()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    with self._cond:
                        if self._finished:
                            break
                        waker[1].clear()
                    await waker[1].wait()
        finally:
            self._remove_waker(waker)
        return self._outcome()

    def __await__(self) -> Generator[Any, None, RunResult]:
        return self.wait_async().__await__()

    def _add_waker(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        import asyncio  # here: `import opsbook` stays cheap

        waker = (asyncio.get_running_loop(), asyncio.Event())
        with self._cond:
            self._wakers.add(waker)
        return waker

    def _remove_waker(self, waker: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._cond:
            self._wakers.discard(waker)


def start(
    runbook: str,
    env: str,
    extravars: Mapping[str, Any] | None = None,
    check: bool = False,
    limit: str | None = None,
    event_handler: EventHandler | None = None,
    timeout: float | None = None,
    reason: str | None = None,
    *,
    secrets: Iterable[str] = (),
    vault_password_file: str | os.PathLike[str] | None = None,
    cancel_callback: CancelCallback | None = None,
    project_dir: str | os.PathLike[str] | None = None,
    inventory_root: str | os.PathLike[str] | None = None,
    envvars: Mapping[str, str] | None = None,
    verbosity: int = 0,
    extravars_files: Iterable[str | os.PathLike[str]] = (),
) -> RunHandle:
    """Start runbook ``runbook`` against environment ``env`` and return its RunHandle at once.

    >>> handle = opsbook.start("backup", "local", reason="before the upgrade")  # doctest: +SKIP
    >>> for event in handle.events(): ...
    >>> handle.cancel()                   # stops it as Ctrl-C does; the result says canceled
    >>> result = handle.wait()            # the RunResult opsbook.run() returns

    Arguments as for :func:`opsbook.run`; bad input raises OpsbookInputError here, before
    anything runs. The run goes on in a thread of its own; a program that ends while it goes
    on cancels it at exit (and waits for its cleanup, as after Ctrl-C).
    """
    from opsbook.runner import RunbookRunner

    runner = RunbookRunner(project_dir, inventory_root=inventory_root)
    return runner.start(
        runbook,
        env,
        extravars,
        check=check,
        limit=limit,
        event_handler=event_handler,
        timeout=timeout,
        reason=reason,
        secrets=secrets,
        vault_password_file=vault_password_file,
        cancel_callback=cancel_callback,
        envvars=envvars,
        verbosity=verbosity,
        extravars_files=extravars_files,
    )
