"""Unit tests of opsbook.handle: the RunHandle's state machine, its event stream (threads and
asyncio), cancel and wait, over a fake engine (no Ansible is run here); the records that
``events()`` and ``opsbook run --json`` give; the runner's status handler."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from opsbook import handle as hd
from opsbook import runner as rn

REPO = Path(__file__).resolve().parents[2]

OK_EVENT = {
    "event": "runner_on_ok",
    "counter": 7,
    "uuid": "u-7",
    "created": "2025-01-01T00:00:00.000000+00:00",
    "stdout": "\r\n\x1b[0;33mchanged: [app1]\x1b[0m\r\n",
    "event_data": {
        "play": "Deploy",
        "task": "Switch current",
        "task_action": "app_release",
        "host": "app1",
        "res": {"changed": True, "msg": "switched"},
    },
}


def _result(status: str = "successful", outputs: dict[str, Any] | None = None) -> rn.RunResult:
    return rn.RunResult(
        runbook="backup", env="local", ident="20250101T000000Z-abcdef", status=status,
        rc=int(rn.exit_code_for(status, outputs)), stats={"db": {"ok": 1}}, duration_s=1.5,
        outputs=outputs or {}, artifacts_dir=Path("/runs/x/artifacts/x"),
    )  # fmt: skip


# --- records ---------------------------------------------------------------------------------
def test_event_record_of_a_host_result() -> None:
    record = hd.event_record(OK_EVENT)
    assert record == {
        "type": "event",
        "event": "runner_on_ok",
        "counter": 7,
        "uuid": "u-7",
        "created": "2025-01-01T00:00:00.000000+00:00",
        "play": "Deploy",
        "task": "Switch current",
        "action": "app_release",
        "host": "app1",
        "status": "changed",
        "msg": "",
        "stdout": "changed: [app1]",
    }
    assert list(record) == list(hd.EVENT_KEYS)


@pytest.mark.parametrize(
    ("event", "status", "msg"),
    [
        ({"event": "runner_on_ok", "event_data": {"host": "h", "res": {"changed": False}}},
         "ok", ""),
        ({"event": "runner_on_failed", "event_data": {"host": "h", "res": {"msg": "disk full"}}},
         "failed", "disk full"),
        ({"event": "runner_on_failed",
          "event_data": {"host": "h", "ignore_errors": True, "res": {"msg": "meh"}}},
         "ignored", "meh"),
        ({"event": "runner_on_unreachable",
          "event_data": {"host": "h", "res": {"msg": "ssh: connect refused"}}},
         "unreachable", "ssh: connect refused"),
        ({"event": "runner_on_skipped", "event_data": {"host": "h"}}, "skipped", ""),
        ({"event": "runner_on_start", "event_data": {"host": "h"}}, "started", ""),
        ({"event": "runner_retry", "event_data": {"host": "h", "res": {"attempts": 1}}},
         "retrying", ""),
        ({"event": "runner_on_ok", "event_data": {"host": "h", "task_action": "debug",
                                                  "res": {"msg": ["line 1", "line 2"]}}},
         "ok", "line 1\nline 2"),
        ({"event": "playbook_on_task_start", "event_data": {"task": "Ping"}}, None, ""),
    ],
)  # fmt: skip
def test_event_record_status_and_message(event: dict, status: str | None, msg: str) -> None:
    record = hd.event_record(event)
    assert (record["status"], record["msg"]) == (status, msg)


def test_event_record_of_an_event_reduced_to_its_ids() -> None:
    """What the runner keeps of an event it could not mask: the record holds no more."""
    record = hd.event_record({"event": "runner_on_ok", "uuid": "u1", "counter": 3})
    assert record["event"] == "runner_on_ok" and record["counter"] == 3
    assert record["host"] is None and record["stdout"] == "" and record["status"] == "ok"


def test_event_record_play_start_names_the_play() -> None:
    record = hd.event_record({"event": "playbook_on_play_start", "event_data": {"name": "Backup"}})
    assert record["play"] == "Backup"


def test_result_record_is_json_with_verdict() -> None:
    result = _result("successful", {"health_check": {"verdict": "warn"}})
    record = json.loads(json.dumps(hd.result_record(result)))
    assert record["type"] == "result"
    assert (record["status"], record["rc"], record["verdict"]) == ("successful", 5, "warn")
    assert record["stats"] == {"db": {"ok": 1}}
    assert record["artifacts_dir"] == "/runs/x/artifacts/x"


# --- a fake engine ---------------------------------------------------------------------------
class Engine:
    """Plays a run: statuses, then events, then waits for a cancel (or a go) and returns."""

    def __init__(self, events: int = 3, *, fail: BaseException | None = None) -> None:
        self.events = events
        self.fail = fail
        self.go = threading.Event()
        self.emitted = threading.Event()
        self.polls = 0

    def __call__(
        self, on_event: rn.EventHandler, should_cancel: rn.CancelCallback, on_status: Any
    ) -> rn.RunResult:
        on_status({"status": "starting", "runner_ident": "ident-1"})
        on_status({"status": "running", "runner_ident": "ident-1"})
        for n in range(1, self.events + 1):
            on_event({"event": "runner_on_ok", "counter": n, "event_data": {"host": f"h{n}"}})
        self.emitted.set()
        if self.fail is not None:
            raise self.fail
        while not self.go.is_set():
            self.polls += 1
            if should_cancel():
                on_event({"event": "playbook_on_stats", "counter": self.events + 1})
                return _result("canceled")
            time.sleep(0.01)
        on_event({"event": "playbook_on_stats", "counter": self.events + 1})
        return _result("successful")


def _handle(engine: Engine, **kwargs: Any) -> hd.RunHandle:
    return hd.RunHandle(engine, runbook="backup", env="local", **kwargs)


def test_a_run_from_start_to_success() -> None:
    engine = Engine()
    handle = _handle(engine)
    assert (handle.status, handle.result, handle.done, handle.ident) == (
        "starting",
        None,
        False,
        None,
    )
    handle.start()
    engine.emitted.wait(5)
    assert handle.status == "running" and handle.ident == "ident-1"
    with pytest.raises(TimeoutError):
        handle.wait(timeout=0.05)  # the run goes on
    assert handle.result is None
    engine.go.set()
    result = handle.wait(timeout=5)
    assert result is handle.result and result.status == "successful"
    assert handle.done and handle.status == "successful"
    assert handle.status_history == ["starting", "running", "successful"]
    counters = [e["counter"] for e in handle.events()]
    assert counters == [1, 2, 3, 4]
    assert [e["counter"] for e in handle] == counters  # every iteration from the first event
    assert handle.cancel() is False  # over already


def test_events_stream_while_the_run_goes_on() -> None:
    engine = Engine(events=2)
    handle = _handle(engine).start()
    seen = []
    for event in handle.events():
        seen.append(event["counter"])
        if len(seen) == 2:
            assert not handle.done  # these came before the run ended
            engine.go.set()
    assert seen == [1, 2, 3] and handle.done


def test_cancel_goes_through_canceling_to_canceled() -> None:
    engine = Engine()
    handle = _handle(engine).start()
    engine.emitted.wait(5)
    assert handle.cancel() is True
    assert handle.status == "canceling"
    assert handle.cancel() is True  # asked twice: the same one cancel
    result = handle.wait(timeout=5)
    assert result.status == "canceled" and result.rc == 4
    assert handle.status_history == ["starting", "running", "canceling", "canceled"]


def test_cancel_before_the_run_begins_is_kept() -> None:
    engine = Engine()
    handle = _handle(engine)
    handle.cancel()
    handle.start()
    assert handle.wait(timeout=5).status == "canceled"
    assert handle.status_history == ["starting", "canceling", "canceled"]


def test_the_callers_cancel_callback_and_event_handler_still_work() -> None:
    raw: list[dict] = []
    engine = Engine()
    handle = _handle(engine, event_handler=raw.append, cancel_callback=lambda: len(raw) >= 3)
    result = handle.start().wait(timeout=5)
    assert result.status == "canceled"
    assert [e["counter"] for e in raw] == [1, 2, 3, 4]  # the runner's own dicts
    assert raw[0]["event_data"] == {"host": "h1"}


def test_a_raising_event_handler_is_the_engines_business_and_the_record_is_kept() -> None:
    def broken(_event: dict) -> None:
        raise RuntimeError("bug in the caller's handler")

    handle = _handle(Engine(), event_handler=broken)
    with pytest.raises(RuntimeError):  # the runner's _Run catches it and warns once
        handle._on_event({"event": "verbose", "counter": 1})
    assert [e["counter"] for e in handle._events] == [1]


def test_an_engine_error_ends_the_run_with_status_error() -> None:
    engine = Engine(fail=OSError("no space left for the run directory"))
    handle = _handle(engine).start()
    with pytest.raises(OSError, match="no space left"):
        handle.wait(timeout=5)
    assert handle.status == "error" and handle.result is None and handle.done
    assert [e["counter"] for e in handle.events()] == [1, 2, 3]  # and the stream ends


def test_run_here_runs_in_the_calling_thread_and_a_handle_runs_once() -> None:
    threads: list[str] = []
    engine = Engine()
    engine.go.set()

    def execute(*args: Any) -> rn.RunResult:
        threads.append(threading.current_thread().name)
        return engine(*args)

    handle = _handle(execute)
    assert handle.run_here().wait(timeout=0).status == "successful"
    assert threads == [threading.current_thread().name]
    with pytest.raises(RuntimeError, match="runs once"):
        handle.start()
    started = _handle(Engine()).start()
    with pytest.raises(RuntimeError, match="runs once"):
        started.run_here()
    started.cancel()
    started.wait(timeout=5)


def test_ctrl_c_while_waiting_cancels_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the main thread, as at the terminal: a first Ctrl-C cancels and the wait goes on
    to the canceled result."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        engine = Engine()
        handle = _handle(engine).start()
        engine.emitted.wait(5)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        result = handle.wait(timeout=10)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.status == "canceled"
    assert "canceling" in handle.status_history


# --- asyncio ---------------------------------------------------------------------------------
def test_async_iteration_and_await_never_block_the_loop() -> None:
    engine = Engine(events=3)
    ticks: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> tuple[list[int], rn.RunResult, int]:
        stop = asyncio.Event()
        tick_task = asyncio.create_task(ticker(stop))
        handle = _handle(engine).start()
        seen = []
        async for event in handle:
            seen.append(event["counter"])
            if len(seen) == 3:
                await asyncio.sleep(0.2)  # the run waits on us: the loop must still tick
                with pytest.raises(TimeoutError):
                    await handle.wait_async(timeout=0.05)
                handle.cancel()
        result = await handle
        stop.set()
        await tick_task
        return seen, result, len(ticks)

    seen, result, count = asyncio.run(main())
    assert seen == [1, 2, 3, 4]
    assert result.status == "canceled"
    assert count >= 20  # the loop kept turning all along


def test_async_iterators_each_see_every_event() -> None:
    engine = Engine(events=2)
    engine.go.set()

    async def main() -> list[list[int]]:
        handle = _handle(engine).start()

        async def collect() -> list[int]:
            return [e["counter"] async for e in handle.aevents()]

        return list(await asyncio.gather(collect(), collect()))

    assert asyncio.run(main()) == [[1, 2, 3], [1, 2, 3]]


# --- the runner's status handler -------------------------------------------------------------
def test_the_runner_reports_starting_and_running_to_the_status_handler(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "playbooks").mkdir(parents=True)
    (root / "ansible.cfg").write_text("[defaults]\n")
    (root / "playbooks" / "backup.yml").write_text("# Backup\n")
    (root / "inventories" / "dev").mkdir(parents=True)
    runner = rn.RunbookRunner(root, runs_dir=tmp_path / "runs")
    plan = runner.plan("backup", "dev")
    ident, private = runner._new_private_dir()
    (private / "artifacts" / ident).mkdir(parents=True)
    seen: list[dict] = []
    state = rn._Run(plan, ident, private, runner.scrubber(plan), None, None, [], seen.append)
    state.on_status({"status": "starting"}, runner_config=types.SimpleNamespace(env={}))
    state.on_status({"status": "running"})
    state.on_status({"status": "successful"})  # the end is the result's business
    assert seen == [
        {"status": "starting", "runner_ident": ident},
        {"status": "running", "runner_ident": ident},
    ]


EXITING_PROGRAM = """
import sys, time
from opsbook.handle import RunHandle
from tests.unit.test_run_handle import Engine

class Noisy(Engine):
    def __call__(self, on_event, should_cancel, on_status):
        result = super().__call__(on_event, should_cancel, on_status)
        time.sleep(0.3)  # a cleanup that takes a while: the program waits for it
        print("run ended:", result.status, flush=True)
        return result

engine = Noisy()
RunHandle(engine, runbook="backup", env="local").start()
engine.emitted.wait(5)
print("program ends", flush=True)
"""


def test_a_program_ending_while_its_run_goes_on_cancels_it_and_waits() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", EXITING_PROGRAM], cwd=REPO, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["program ends", "run ended: canceled"]
