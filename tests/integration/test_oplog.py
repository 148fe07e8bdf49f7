"""The operation log written by real ansible-playbook (and ansible-runner) runs."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ansible_runner
import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
PLAYBOOK_CMD = str(VENV_BIN / "ansible-playbook")
LOCAL_HOST = {
    "ansible_connection": "local",
    "ansible_python_interpreter": str(VENV_BIN / "python"),
}
VOLATILE = ("id", "started", "finished", "duration_s")

SUCCESS_PLAY = [
    {
        "name": "Succeed",
        "hosts": "all",
        "tasks": [
            {"name": "Change something", "ansible.builtin.command": "true", "changed_when": True},
            {"name": "Look around", "ansible.builtin.command": "true", "changed_when": False},
            {"name": "Skip this", "ansible.builtin.debug": {"msg": "x"}, "when": False},
        ],
    }
]


def _fail_play(task: Mapping[str, Any], play_vars: Mapping[str, Any] | None = None) -> list:
    return [{"name": "Fail", "hosts": "all", "vars": dict(play_vars or {}), "tasks": [task]}]


# -- helpers ------------------------------------------------------------------


def write_inventory(base: Path, hosts: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """An inventory directory like make_inventory's: hosts.yml + group_vars/all/vars.yml."""
    inventory = base / "inventories" / "test"
    (inventory / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
    hosts = hosts or {"localhost": LOCAL_HOST}
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": dict(hosts)}}))
    group_vars = {"opsbook_env": "staging", "vault_db_password": "vaultpw-31337"}
    (inventory / "group_vars" / "all" / "vars.yml").write_text(yaml.safe_dump(group_vars))
    return inventory


def write_playbook(base: Path, name: str, plays: list) -> Path:
    path = base / "playbooks" / f"{name}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    return path


def clean_env(**overrides: str) -> dict[str, str]:
    """The test's environment without opsbook/ansible settings that would change the run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSBOOK_", "ANSIBLE_"))}
    env.update(ANSIBLE_NOCOLOR="1", **overrides)
    return env


def run_playbook(
    playbooks: Path | list[Path], inventory: Path, *args: str, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    paths = playbooks if isinstance(playbooks, list) else [playbooks]
    cmd = [PLAYBOOK_CMD, *map(str, paths), "-i", str(inventory), *args]
    return subprocess.run(
        cmd, cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=120, check=False
    )


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def oplog(tmp_path: Path) -> Path:
    return tmp_path / "log" / "oplog.jsonl"


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    return write_inventory(tmp_path)


# -- tests --------------------------------------------------------------------


def test_successful_run_is_recorded(tmp_path: Path, inventory: Path, oplog: Path) -> None:
    playbook = write_playbook(tmp_path, "health_probe", SUCCESS_PLAY)
    env = clean_env(OPSBOOK_OPLOG=str(oplog), OPSBOOK_RUN_ID="run-42", OPSBOOK_OPERATOR="alice")
    reason = json.dumps({"opsbook_reason": "weekly restore drill"})
    proc = run_playbook(playbook, inventory, "-e", reason, "--limit", "localhost", env=env)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_log(oplog)
    assert record["id"] == "run-42"
    assert record["operator"] == "alice"
    assert record["playbook"] == "health_probe"
    assert record["env"] == "staging"
    assert record["reason"] == "weekly restore drill"
    assert record["check_mode"] is False
    assert record["limit"] == "localhost"
    assert record["extra_var_keys"] == ["opsbook_reason"]
    assert record["status"] == "successful"
    assert record["hosts"] == {
        "localhost": {"ok": 2, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 1,
                      "rescued": 0, "ignored": 0},
    }  # fmt: skip
    assert record["failures"] == []
    assert record["outputs"] == {}
    assert 0 < record["duration_s"] < 60
    assert record["started"].endswith("Z")
    assert record["started"] <= record["finished"]
    assert stat.S_IMODE(oplog.stat().st_mode) == 0o600
    assert stat.S_IMODE(oplog.parent.stat().st_mode) == 0o700
    assert "WARNING" not in proc.stderr


def test_failed_task_is_recorded(tmp_path: Path, inventory: Path, oplog: Path) -> None:
    task = {"name": "backup | Check free space", "ansible.builtin.fail": {"msg": "disk full"}}
    playbook = write_playbook(tmp_path, "backup", _fail_play(task))
    proc = run_playbook(playbook, inventory, env=clean_env(OPSBOOK_OPLOG=str(oplog)))

    assert proc.returncode == 2
    [record] = read_log(oplog)
    assert record["status"] == "failed"
    assert record["hosts"]["localhost"]["failed"] == 1
    assert record["failures"] == [
        {"host": "localhost", "task": "backup | Check free space", "msg": "disk full"}
    ]


def test_no_log_failure_leaves_no_trace_of_the_secret(
    tmp_path: Path, inventory: Path, oplog: Path
) -> None:
    secret = "tok-SECRET-4242"
    task = {
        "name": "Call the API",
        "ansible.builtin.shell": "echo {{ payload }}; echo {{ payload }} >&2; exit 3",
        "no_log": True,
    }
    playbook = write_playbook(tmp_path, "rotate_secrets", _fail_play(task, {"payload": secret}))
    proc = run_playbook(playbook, inventory, env=clean_env(OPSBOOK_OPLOG=str(oplog)))

    assert proc.returncode == 2
    assert secret not in oplog.read_text()
    [record] = read_log(oplog)
    [failure] = record["failures"]
    assert failure["task"] == "Call the API"
    assert "no_log: true" in failure["msg"]


def test_secret_extra_var_leaves_only_its_name(
    tmp_path: Path, inventory: Path, oplog: Path
) -> None:
    task = {
        "name": "Connect",
        "ansible.builtin.fail": {
            "msg": "cannot reach {{ database_url }} as {{ database_url | urlsplit('password') }}",
        },
    }
    playbook = write_playbook(tmp_path, "db_migrate", _fail_play(task))
    dsn = "database_url=postgresql://u:hunter2@h/db"
    proc = run_playbook(playbook, inventory, "-e", dsn, env=clean_env(OPSBOOK_OPLOG=str(oplog)))

    assert proc.returncode == 2
    text = oplog.read_text()
    assert "hunter2" not in text
    [record] = read_log(oplog)
    assert record["extra_var_keys"] == ["database_url"]
    # the whole value of a secret-named variable is scrubbed, not only its password
    assert record["failures"][0]["msg"] == "cannot reach *** as ***"


def test_vaulted_value_is_scrubbed(tmp_path: Path, inventory: Path, oplog: Path) -> None:
    password_file = tmp_path / "vault-pass"
    password_file.write_text("opsbook-test\n")
    vaulted = subprocess.run(
        [str(VENV_BIN / "ansible-vault"), "encrypt_string", "--vault-password-file",
         str(password_file), "sk_live_VAULTED_1234", "--name", "stripe_key"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (inventory / "group_vars" / "all" / "vault.yml").write_text(vaulted)
    task = {"name": "Charge", "ansible.builtin.fail": {"msg": "declined for {{ stripe_key }}"}}
    playbook = write_playbook(tmp_path, "billing", _fail_play(task))
    proc = run_playbook(
        playbook, inventory, "--vault-password-file", str(password_file),
        env=clean_env(OPSBOOK_OPLOG=str(oplog)),
    )  # fmt: skip

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "VAULTED" not in oplog.read_text()
    [record] = read_log(oplog)
    assert record["failures"][0]["msg"] == "declined for ***"


def test_check_mode_is_recorded(tmp_path: Path, inventory: Path, oplog: Path) -> None:
    playbook = write_playbook(tmp_path, "deploy", SUCCESS_PLAY)
    proc = run_playbook(playbook, inventory, "--check", env=clean_env(OPSBOOK_OPLOG=str(oplog)))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_log(oplog)
    assert record["check_mode"] is True


def test_each_run_appends_one_line(tmp_path: Path, inventory: Path, oplog: Path) -> None:
    playbook = write_playbook(tmp_path, "deploy", SUCCESS_PLAY)
    env = clean_env(OPSBOOK_OPLOG=str(oplog))
    for _ in range(2):
        assert run_playbook(playbook, inventory, env=env).returncode == 0

    first, second = read_log(oplog)
    assert first["id"] != second["id"]
    assert first["hosts"] == second["hosts"]


def test_concurrent_runs_append_whole_lines(tmp_path: Path, inventory: Path, oplog: Path) -> None:
    playbook = write_playbook(tmp_path, "deploy", SUCCESS_PLAY)
    cmd = [PLAYBOOK_CMD, str(playbook), "-i", str(inventory)]
    env = clean_env(OPSBOOK_OPLOG=str(oplog))
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL) for _ in range(4)]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0, 0, 0]

    records = read_log(oplog)
    assert len({record["id"] for record in records}) == 4


def test_set_stats_data_becomes_outputs(tmp_path: Path, inventory: Path, oplog: Path) -> None:
    report = {
        "verdict": "warn",
        "database": {"dsn": "postgresql://u:hunter2@h/db", "latency_ms": 4},
        "problems": ["replica lag 12s on postgresql://u:hunter2@replica/db"],
    }
    task = {"name": "Publish", "ansible.builtin.set_stats": {"data": {"health_check": report}}}
    plays = [{"name": "Report", "hosts": "all", "tasks": [task]}]
    playbook = write_playbook(tmp_path, "health_check", plays)
    proc = run_playbook(playbook, inventory, env=clean_env(OPSBOOK_OPLOG=str(oplog)))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    [record] = read_log(oplog)
    assert record["outputs"] == {
        "health_check": {
            "verdict": "warn",
            "database": {"dsn": "***", "latency_ms": 4},
            "problems": ["replica lag 12s on postgresql://u:***@replica/db"],
        }
    }


def test_unwritable_log_warns_and_run_succeeds(tmp_path: Path, inventory: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    playbook = write_playbook(tmp_path, "deploy", SUCCESS_PLAY)
    env = clean_env(OPSBOOK_OPLOG=str(blocker / "oplog.jsonl"))
    proc = run_playbook(playbook, inventory, env=env)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "opsbook_oplog: operation log not written" in proc.stderr
    assert blocker.read_text() == ""


def test_unreachable_host_is_recorded(tmp_path: Path, oplog: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on: connection refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ghost = {"ansible_host": "127.0.0.1", "ansible_port": port, "ansible_connection": "ssh",
             "ansible_python_interpreter": "/usr/bin/python3"}  # fmt: skip
    inventory = write_inventory(tmp_path, {"ghost": ghost})
    playbook = write_playbook(tmp_path, "deploy", SUCCESS_PLAY)
    proc = run_playbook(playbook, inventory, env=clean_env(OPSBOOK_OPLOG=str(oplog)))

    assert proc.returncode == 4, proc.stdout + proc.stderr
    [record] = read_log(oplog)
    assert record["status"] == "unreachable"
    assert record["hosts"]["ghost"]["unreachable"] == 1
    [failure] = record["failures"]
    assert failure["host"] == "ghost"
    assert failure["task"] == "Change something"
    # Ansible's own words vary with the task; ssh's reason, with the host and port, is there
    assert f"ssh: connect to host 127.0.0.1 port {port}: Connection refused" in failure["msg"]


def test_default_path_is_in_the_project(tmp_path: Path, inventory: Path) -> None:
    project = tmp_path / "project"
    playbook = write_playbook(project, "deploy", SUCCESS_PLAY)
    proc = run_playbook(playbook, inventory, env=clean_env())

    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = project / ".opsbook" / "oplog.jsonl"
    [record] = read_log(log)
    assert record["playbook"] == "deploy"
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700


def test_path_from_ini(tmp_path: Path, inventory: Path) -> None:
    log = tmp_path / "from-ini" / "oplog.jsonl"
    config = tmp_path / "ansible.cfg"
    config.write_text(
        "[defaults]\n"
        f"callback_plugins = {ROOT / 'callback_plugins'}\n"
        "callbacks_enabled = opsbook_oplog\n"
        "[callback_opsbook_oplog]\n"
        f"path = {log}\n"
    )
    playbook = write_playbook(tmp_path, "deploy", SUCCESS_PLAY)
    proc = run_playbook(playbook, inventory, env=clean_env(ANSIBLE_CONFIG=str(config)))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [record["playbook"] for record in read_log(log)] == ["deploy"]


def test_one_record_per_playbook_on_the_command_line(
    tmp_path: Path, inventory: Path, oplog: Path
) -> None:
    first = write_playbook(tmp_path, "backup", SUCCESS_PLAY)
    second = write_playbook(tmp_path, "restore", SUCCESS_PLAY)
    proc = run_playbook([first, second], inventory, env=clean_env(OPSBOOK_OPLOG=str(oplog)))

    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = read_log(oplog)
    assert [record["playbook"] for record in records] == ["backup", "restore"]
    assert records[0]["hosts"] == records[1]["hosts"]  # per playbook, not cumulative


def test_same_record_under_ansible_runner(tmp_path: Path, inventory: Path) -> None:
    task = {"name": "Publish", "ansible.builtin.set_stats": {"data": {"release": "1.4.2"}}}
    plays = [*SUCCESS_PLAY, {"name": "Report", "hosts": "all", "tasks": [task]}]
    playbook = write_playbook(tmp_path, "deploy", plays)
    reason = {"opsbook_reason": "release 1.4.2"}
    plain_log, runner_log = tmp_path / "plain.jsonl", tmp_path / "runner.jsonl"

    proc = run_playbook(
        playbook, inventory, "-e", json.dumps(reason), env=clean_env(OPSBOOK_OPLOG=str(plain_log))
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    private_data_dir = tmp_path / "runner"
    private_data_dir.mkdir()
    result = ansible_runner.run(
        private_data_dir=str(private_data_dir),
        project_dir=str(ROOT),
        playbook=str(playbook),
        inventory=str(inventory),
        extravars=reason,
        envvars={
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            "OPSBOOK_OPLOG": str(runner_log),
            # ansible-runner sets ANSIBLE_CALLBACK_PLUGINS, which overrides ansible.cfg's
            # callback_plugins: whoever drives runner must name the project's directory here.
            "ANSIBLE_CALLBACK_PLUGINS": str(ROOT / "callback_plugins"),
        },
        quiet=True,
    )

    assert (result.status, result.rc) == ("successful", 0)
    [plain] = read_log(plain_log)
    [runner] = read_log(runner_log)
    for volatile in VOLATILE:
        plain.pop(volatile), runner.pop(volatile)
    assert runner == plain
    assert runner["outputs"] == {"release": "1.4.2"}
