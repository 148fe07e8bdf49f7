"""opsbook.start() and ``opsbook run --json`` over real ansible-runner runs.

Most runs use a small project generated in tmp (playbooks that succeed, sleep, or print
planted secrets, against localhost); the cancel of a real runbook is db_migrate against the
lab's PostgreSQL, stopped in the middle of a slow migration as tests/integration/
test_interrupts.py stops it, but by ``handle.cancel()``: a program using the API runs under
tests/reaper.py (a subreaper that sees whatever outlives it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import opsbook
from opsbook.lab import PostgresCluster
from opsbook.secrets import secret_forms
from tests.harness import PROJECT_ROOT, ansible_env, wait_for
from tests.integration.test_interrupts import (
    applied,
    columns,
    files_holding,
    lock_holders,
    migrations,
    sleeping_in,
)

pytestmark = pytest.mark.integration

OPSBOOK_BIN = Path(sys.executable).parent / "opsbook"
REAPER = PROJECT_ROOT / "tests" / "reaper.py"

DB_PASSWORD = "Db-Pa55w0rd-h4Nd"
DATABASE_URL = f"postgresql://app:{DB_PASSWORD}@db.internal:5432/app"
API_TOKEN = "tok-9a8b7c6d5e4f3a2b"
GROUP_VARS_SECRET = "gv-Api-K3y-h4ndl3"
SECRETS = (DB_PASSWORD, DATABASE_URL, API_TOKEN, GROUP_VARS_SECRET)

PLAYBOOKS = {
    "ok": """\
# Succeed and publish outputs
- name: Succeed
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
    - name: Publish the outputs
      ansible.builtin.set_stats:
        data:
          answer: 42
          check: {verdict: ok}
""",
    "sleep": """\
# Sleep for a long time
- name: Sleep
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Sleep long
      ansible.builtin.command: sleep {{ sleep_seconds | default(37.25) }}
      changed_when: false
""",
    "secret": """\
# Use secrets, carelessly
- name: Use secrets
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Print every secret (a careless playbook)
      ansible.builtin.debug:
        msg: "db={{ database_url }} token={{ api_token }} gv={{ vault_app_api_key }}"
    - name: Publish one
      ansible.builtin.set_stats:
        data:
          db_url: "{{ database_url }}"
    - name: Fail with the DSN in the message
      ansible.builtin.fail:
        msg: "cannot connect to {{ database_url }}"
""",
}

ANSIBLE_CFG = """\
[defaults]
gathering = explicit
retry_files_enabled = false
interpreter_python = auto_silent
stdout_callback = ansible.builtin.default
"""


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary opsbook project with environment `test` (localhost)."""
    root = tmp_path_factory.mktemp("handle-project")
    (root / "ansible.cfg").write_text(ANSIBLE_CFG)
    (root / "playbooks").mkdir()
    for name, text in PLAYBOOKS.items():
        (root / "playbooks" / f"{name}.yml").write_text(text)
    inventory = root / "inventories" / "test"
    (inventory / "group_vars" / "all").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n"
    )
    (inventory / "group_vars" / "all" / "vars.yml").write_text(
        f"opsbook_env: test\nvault_app_api_key: {GROUP_VARS_SECRET}\n"
    )
    return root


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (
        "OPSBOOK_PROJECT_DIR", "OPSBOOK_INVENTORY_ROOT", "OPSBOOK_RUNS_DIR",
        "OPSBOOK_VAULT_PASSWORD_FILE", "ANSIBLE_VAULT_PASSWORD_FILE", "OPSBOOK_ENV_PASSTHROUGH",
        "ANSIBLE_CALLBACK_PLUGINS", "ANSIBLE_CONFIG",
    ):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPSBOOK_OPLOG", str(tmp_path / "oplog.jsonl"))


def _holds_secret(text: str) -> list[str]:
    return [s for s in SECRETS if any(form in text for form in secret_forms(s))]


def _unique_sleep() -> str:
    """A sleep duration no other process uses: pgrep finds this run's sleep only."""
    return f"{37 + random.random():.6f}"


def _pgrep(seconds: str) -> str:
    found = subprocess.run(["pgrep", "-f", f"sleep {seconds}"], capture_output=True, text=True)
    return found.stdout.strip()


def _sleeping(seconds: str) -> str:
    time.sleep(0.3)
    return _pgrep(seconds)


# --- Python API: threads ---------------------------------------------------------------------
def test_start_streams_masked_events_then_the_result(proj: Path) -> None:
    handle = opsbook.start(
        "secret", "test", {"database_url": DATABASE_URL, "api_token": API_TOKEN},
        project_dir=proj,
    )  # fmt: skip
    assert handle.status in ("starting", "running")
    streamed: list[tuple[dict[str, Any], bool]] = []
    for event in handle.events():
        streamed.append((event, handle.done))
    result = handle.wait(timeout=60)

    events = [event for event, _done in streamed]
    assert not streamed[0][1], "the first events came while the run was going on"
    counters = [e["counter"] for e in events]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)
    assert events[0]["event"] == "playbook_on_start"
    assert events[-1]["event"] == "playbook_on_stats"
    tasks = [e["task"] for e in events if e["event"] == "playbook_on_task_start"]
    assert tasks == ["Print every secret (a careless playbook)", "Publish one",
                     "Fail with the DSN in the message"]  # fmt: skip
    (printed,) = [e for e in events if e["event"] == "runner_on_ok" and e["msg"]]
    assert (printed["host"], printed["status"]) == ("localhost", "ok")
    assert printed["action"] == "ansible.builtin.debug"
    assert printed["msg"] == "db=******** token=******** gv=********"
    (failed,) = [e for e in events if e["status"] == "failed"]
    assert failed["msg"] == "cannot connect to ********"
    assert "fatal: [localhost]" in failed["stdout"]
    # the run's masking holds for every event, as for the artifacts
    assert _holds_secret(json.dumps(events)) == []

    assert (result.status, result.rc) == ("failed", 1)
    assert result is handle.result and result.ident == handle.ident
    assert result.outputs["db_url"] == "********"
    assert handle.status == "failed"
    assert handle.status_history == ["starting", "running", "failed"]
    assert [e["counter"] for e in handle.events()] == counters  # again, from the first one


# --- Python API: asyncio ---------------------------------------------------------------------
def test_async_stream_and_cancel_mid_run(proj: Path) -> None:
    """A web app's view: the events streamed and the run canceled from the event loop, which
    keeps turning all along (no thread of the caller's own)."""
    seconds = _unique_sleep()
    ticks = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.05)

    async def main() -> tuple[opsbook.RunHandle, list[dict[str, Any]], float, Any]:
        tick_task = asyncio.create_task(ticker())
        handle = opsbook.start("sleep", "test", {"sleep_seconds": seconds}, project_dir=proj)
        seen = []
        canceled_at = 0.0
        async for event in handle:
            seen.append(event)
            if event["event"] == "runner_on_start" and event["task"] == "Sleep long":
                for _ in range(200):  # until the task's sleep runs (the loop keeps turning)
                    if _pgrep(seconds):
                        break
                    await asyncio.sleep(0.05)
                assert _pgrep(seconds), "the task's process runs"
                assert handle.cancel() is True
                canceled_at = time.monotonic()
        result = await handle
        tick_task.cancel()
        return handle, seen, time.monotonic() - canceled_at, result

    handle, seen, stop_s, result = asyncio.run(main())
    started = [e for e in seen if e["event"] == "runner_on_start"]
    assert [e["host"] for e in started] == ["localhost"], seen
    assert (result.status, result.rc) == ("canceled", 4)
    assert handle.status_history == ["starting", "running", "canceling", "canceled"]
    assert stop_s < 8, stop_s  # SIGTERM within half a second; no 10 s grace wasted
    assert _sleeping(seconds) == "", "the playbook's processes are gone"
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    # ticking every 50 ms from the start to the end of the run (a second or two at least); a
    # loop blocked by the run would show one gap as long as the 60-s task (or a deadlock)
    assert len(ticks) >= 10 and max(gaps) < 2.0, ("the event loop was blocked", len(ticks), gaps)


# --- Python API: cancel a real runbook -------------------------------------------------------
@pytest.fixture
def migrate_db(pg: PostgresCluster) -> Any:
    name = f"hdl_mig_{os.urandom(3).hex()}"
    pg.create_database(name)
    yield name
    pg.drop_database(name)


def test_cancel_stops_a_migration_like_ctrl_c(
    pg: PostgresCluster, migrate_db: str, make_inventory: Any, tmp_path: Path
) -> None:
    """handle.cancel() in the middle of a 60 s migration: the module cancels its statement
    and rolls back, the advisory lock is free, nothing of the run is left running, the
    operation log says canceled, and the result and the handle say canceled."""
    inventory = make_inventory(env="hdl", app_hosts=[], database_url=pg.dsn_for(migrate_db))
    dirs = {"HOME": tmp_path / "home", "TMPDIR": tmp_path / "tmp"}
    for path in dirs.values():
        path.mkdir()
    trigger = tmp_path / "cancel-now"
    log_path = tmp_path / "driver.log"
    env = ansible_env(tmp_path / "oplog.jsonl", {
        **{k: str(v) for k, v in dirs.items()},
        "OPSBOOK_PROJECT_DIR": str(PROJECT_ROOT),
        "OPSBOOK_INVENTORY_ROOT": str(inventory.parent),
        "OPSBOOK_RUNS_DIR": str(tmp_path / "runs"),
    })  # fmt: skip
    extra = json.dumps({"migrations_dir": str(migrations(tmp_path, 60))})
    driver = [sys.executable, "-m", "tests.integration.handle_driver", "db_migrate", "hdl",
              extra, str(trigger)]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(REAPER), "20", "--", *driver], cwd=PROJECT_ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
    try:
        wait_for(lambda: sleeping_in(pg, migrate_db), 60, "the slow migration to run")
        trigger.touch()
        canceled_at = time.monotonic()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stop_s = time.monotonic() - canceled_at
    report = json.loads(out.splitlines()[-1])
    output = log_path.read_text()
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]

    assert report["rc"] == 0 and report["left"] == [], (report, output[-3000:])
    result = records[-1]
    assert result["type"] == "result", output[-3000:]
    assert (result["status"], result["rc"], result["final"]) == ("canceled", 4, "canceled")
    assert result["history"] == ["starting", "running", "canceling", "canceled"]
    assert stop_s < 10, stop_s  # the module stopped on the SIGTERM: no SIGKILL after a grace
    events = records[:-1]
    assert any(e["event"] == "runner_on_start" and e["host"] == "localhost" for e in events)
    # what the migration had begun is undone and its lock free, as after a Ctrl-C
    wait_for(lambda: not sleeping_in(pg, migrate_db) and lock_holders(pg, migrate_db) == 0,
             10, "the statement to end and the advisory lock to be free")  # fmt: skip
    assert applied(pg, migrate_db) == [1]
    assert columns(pg, migrate_db) == ["id"]
    line = json.loads((tmp_path / "oplog.jsonl").read_text().splitlines()[-1])
    assert (line["playbook"], line["status"], line["id"]) == (
        "db_migrate",
        "canceled",
        result["ident"],
    )
    assert files_holding(pg.password, *dirs.values(), tmp_path / "runs") == []
    assert not any(form in output for form in secret_forms(pg.password))


# --- opsbook run --json ----------------------------------------------------------------------
def _cli(proj: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPSBOOK_PROJECT_DIR": str(proj)}
    return subprocess.run(
        [str(OPSBOOK_BIN), *args], capture_output=True, text=True, env=env, timeout=120
    )


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]  # every line: one JSON object


def test_cli_json_prints_events_then_the_result(proj: Path) -> None:
    proc = _cli(proj, "run", "ok", "--env", "test", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = _lines(proc.stdout)
    *events, result = lines
    assert {e["type"] for e in events} == {"event"}
    assert [e["counter"] for e in events] == sorted(e["counter"] for e in events)
    assert ("runner_on_ok", "localhost", "Ping", "ok") in [
        (e["event"], e["host"], e["task"], e["status"]) for e in events
    ]
    assert result["type"] == "result"
    assert (result["status"], result["rc"], result["verdict"]) == ("successful", 0, "ok")
    assert result["stats"]["localhost"]["ok"] == 2
    assert result["outputs"]["answer"] == 42
    assert result["runbook"] == "ok" and result["env"] == "test"
    assert proc.stderr == ""  # no progress text anywhere


def test_cli_json_failed_run_masked_and_exit_1(proj: Path) -> None:
    proc = _cli(proj, "run", "secret", "--env", "test", "--json",
                "-e", f"database_url={DATABASE_URL}", "-e", f"api_token={API_TOKEN}")  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    *events, result = _lines(proc.stdout)
    assert (result["status"], result["rc"]) == ("failed", 1)
    assert result["failures"] == [
        {"host": "localhost", "task": "Fail with the DSN in the message",
         "msg": "cannot connect to ********"}
    ]  # fmt: skip
    assert any(e["msg"] == "db=******** token=******** gv=********" for e in events)
    assert _holds_secret(proc.stdout + proc.stderr) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_json_interrupted_ends_with_a_canceled_result(proj: Path, signum: int) -> None:
    seconds = _unique_sleep()
    env = {**os.environ, "OPSBOOK_PROJECT_DIR": str(proj)}
    proc = subprocess.Popen(
        [str(OPSBOOK_BIN), "run", "sleep", "--env", "test", "--json",
         "-e", f"sleep_seconds={seconds}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    first = []
    for line in proc.stdout:
        first.append(json.loads(line))
        if first[-1]["event"] == "runner_on_start" and first[-1]["task"] == "Sleep long":
            break
    wait_for(lambda: _sleeping(seconds), 10, "the task's sleep")
    proc.send_signal(signum)
    rest, err = proc.communicate(timeout=20)
    assert proc.returncode == 4, rest + err
    *_events, result = first + _lines(rest)
    assert (result["type"], result["status"], result["rc"]) == ("result", "canceled", 4)
    assert _sleeping(seconds) == ""
