"""opsbook over real ansible-runner, against a small project generated in tmp.

The project: a copy of the real ansible.cfg (its operation-log callback swapped
for a tiny marker callback), a few playbooks, and an inventory with localhost
(connection local) plus a host nobody answers on (127.0.10.250, port 1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import opsbook
from opsbook import OpsbookInputError, RunbookRunner
from opsbook.runner import env_allowed
from opsbook.secrets import REDACTED, secret_forms

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OPSBOOK_BIN = Path(sys.executable).parent / "opsbook"

# Planted secrets: in extra vars, in the inventory's group_vars, in the environment.
DB_PASSWORD = "Db-Pa55w0rd-q7Zr"
DATABASE_URL = f"postgresql://app:{DB_PASSWORD}@db.internal:5432/app"
API_TOKEN = "tok-4f1c9e77a2b54d0e"
GROUP_VARS_SECRET = "gv-Api-K3y-81c2f0d6"
ENV_SECRET = "aws-S3cret-5d7e1b2c9a"
ALL_SECRETS = (DB_PASSWORD, DATABASE_URL, API_TOKEN, GROUP_VARS_SECRET, ENV_SECRET)

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
          env: "{{ opsbook_env }}"
          reason: "{{ opsbook_reason | default('') }}"
          count_type: "{{ count | default(0) | type_debug }}"
          run_id: "{{ lookup('ansible.builtin.env', 'OPSBOOK_RUN_ID') }}"
          operator: "{{ lookup('ansible.builtin.env', 'OPSBOOK_OPERATOR') }}"
          dropped_env: "{{ lookup('ansible.builtin.env', 'NOT_ALLOWED_ANYWHERE') }}"
          passthrough_env: "{{ lookup('ansible.builtin.env', 'OPSBOOK_TEST_VISIBLE') }}"
""",
    "fail": """\
# Fail on purpose
- name: Fail
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
    - name: Check the disk
      ansible.builtin.fail:
        msg: disk is full on purpose
""",
    "warn": """\
# Check something and find it wants a look
- name: Warn
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Publish a verdict
      ansible.builtin.set_stats:
        data:
          checks: {verdict: "{{ verdict | default('warn') }}"}
""",
    "ping_all": """\
# Ping every host
- name: Ping all
  hosts: all
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:
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
    "touch": """\
# Create a file
- name: Touch
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Create the target file
      ansible.builtin.file:
        path: "{{ target }}"
        state: touch
        mode: "0644"
""",
    "secret": """\
# Use secrets, carelessly
- name: Use secrets
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Use the group_vars secret quietly
      ansible.builtin.debug:
        msg: "{{ vault_app_api_key }}"
      no_log: true
    - name: Print every secret (a careless playbook)
      ansible.builtin.debug:
        msg: >-
          db={{ database_url }} token={{ api_token }} gv={{ vault_app_api_key }}
          env={{ lookup('ansible.builtin.env', 'AWS_SECRET_ACCESS_KEY') }}
    - name: Write secrets into the artifacts, as a plugin or a fact cache could
      ansible.builtin.copy:
        content: "{{ api_token }} {{ database_url }} {{ vault_app_api_key }}"
        dest: "{{ lookup('ansible.builtin.env', 'AWX_ISOLATED_DATA_DIR') }}/written-by-task.txt"
        mode: "0600"
      no_log: true
    - name: Publish proof that the secrets arrived
      ansible.builtin.set_stats:
        data:
          token_sha: "{{ api_token | hash('sha256') }}"
          env_sha: "{{ lookup('ansible.builtin.env', 'AWS_SECRET_ACCESS_KEY') | hash('sha256') }}"
          db_url: "{{ database_url }}"
    - name: Fail with the DSN in the message
      ansible.builtin.fail:
        msg: "cannot connect to {{ database_url }}"
""",
    "_partial": "# Not a runbook (leading underscore)\n- ansible.builtin.import_playbook: ok.yml\n",
    "site": "# Everything\n- ansible.builtin.import_playbook: ok.yml\n",
}

MARKER_CALLBACK = '''\
"""Test callback: records what the Ansible process saw, to prove the project's
callback_plugins are loaded and the opsbook environment reaches Ansible."""
import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "opsbook_test_marker"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_start(self, playbook):
        path = os.environ.get("OPSBOOK_TEST_MARKER")
        if path:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({
                    "run_id": os.environ.get("OPSBOOK_RUN_ID"),
                    "operator": os.environ.get("OPSBOOK_OPERATOR"),
                }) + "\\n")
'''


def _ansible_cfg() -> str:
    text = (REPO / "ansible.cfg").read_text()
    text = re.sub(r"(?m)^callbacks_enabled\s*=.*$", "callbacks_enabled = opsbook_test_marker", text)
    assert "opsbook_test_marker" in text
    # a project's own callback_plugins directory (runner's ANSIBLE_CALLBACK_PLUGINS hides it;
    # opsbook run gives it back: configured_callback_dirs)
    return text.replace("[defaults]\n", "[defaults]\ncallback_plugins = callback_plugins\n", 1)


def _inventory() -> str:
    return f"""\
all:
  hosts:
    localhost:
      ansible_connection: local
      ansible_python_interpreter: {sys.executable}
    deadhost:
      ansible_host: 127.0.10.250
      ansible_port: 1
      ansible_user: nobody
      ansible_ssh_common_args: >-
        -o ConnectTimeout=2 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
"""


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary opsbook project with envs `test` and `other`."""
    root = tmp_path_factory.mktemp("project")
    (root / "ansible.cfg").write_text(_ansible_cfg())
    (root / "callback_plugins").mkdir()
    (root / "callback_plugins" / "opsbook_test_marker.py").write_text(MARKER_CALLBACK)
    (root / "playbooks").mkdir()
    for name, text in PLAYBOOKS.items():
        (root / "playbooks" / f"{name}.yml").write_text(text)
    for env in ("test", "other"):
        inventory = root / "inventories" / env
        (inventory / "group_vars" / "all").mkdir(parents=True)
        (inventory / "hosts.yml").write_text(_inventory())
        (inventory / "group_vars" / "all" / "vars.yml").write_text(
            f"opsbook_env: {env}\nvault_app_api_key: {GROUP_VARS_SECRET}\n"
        )
    return root


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No opsbook setting leaks in from the caller's environment."""
    for var in (
        "OPSBOOK_PROJECT_DIR", "OPSBOOK_INVENTORY_ROOT", "OPSBOOK_RUNS_DIR", "OPSBOOK_OPERATOR",
        "OPSBOOK_VAULT_PASSWORD_FILE", "ANSIBLE_VAULT_PASSWORD_FILE", "OPSBOOK_ENV_PASSTHROUGH",
        "ANSIBLE_CALLBACK_PLUGINS", "ANSIBLE_CONFIG",
    ):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPSBOOK_OPLOG", str(tmp_path / "oplog.jsonl"))


def _run_dirs(proj: Path) -> set[str]:
    runs = proj / ".opsbook" / "runs"
    return {p.name for p in runs.iterdir()} if runs.is_dir() else set()


def _files_with_secrets(root: Path, values: tuple[str, ...] = ALL_SECRETS) -> dict[str, list[str]]:
    """Every file under root holding any form of any value: {file: [values]}."""
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits = [v for v in values if any(f.encode() in data for f in secret_forms(v))]
            if hits:
                found[str(path)] = hits
    return found


def _cli(
    proj: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "OPSBOOK_PROJECT_DIR": str(proj), **(env or {})}
    return subprocess.run(
        [str(OPSBOOK_BIN), *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


# --- Python API ----------------------------------------------------------------------
def test_success_returns_stats_outputs_and_identity(
    proj: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "marker.jsonl"
    monkeypatch.setenv("OPSBOOK_TEST_MARKER", str(marker))
    monkeypatch.setenv("OPSBOOK_TEST_VISIBLE", "visible")  # OPSBOOK_* passes
    monkeypatch.setenv("OPSBOOK_OPERATOR", "alice")
    monkeypatch.setenv("NOT_ALLOWED_ANYWHERE", "dropped")
    events: list[str] = []

    result = opsbook.run(
        "ok", "test", {"count": 3}, reason="integration test",
        event_handler=lambda e: events.append(e["event"]), project_dir=proj,
    )  # fmt: skip

    assert (result.status, result.rc, result.ansible_rc) == ("successful", 0, 0)
    assert result.stats == {
        "localhost": {
            "ok": 2,
            "changed": 0,
            "failed": 0,
            "unreachable": 0,
            "skipped": 0,
            "rescued": 0,
            "ignored": 0,
        }
    }
    assert result.outputs["answer"] == 42
    assert result.outputs["env"] == "test"
    assert result.outputs["reason"] == "integration test"
    assert result.outputs["count_type"] == "int"
    assert result.outputs["run_id"] == result.ident
    assert result.outputs["operator"] == "alice"
    assert result.outputs["passthrough_env"] == "visible"
    assert result.outputs["dropped_env"] == ""
    assert result.failures == [] and result.errors == []
    assert "playbook_on_stats" in events and "runner_on_ok" in events
    assert result.private_data_dir == proj / ".opsbook" / "runs" / result.ident
    assert result.artifacts_dir == result.private_data_dir / "artifacts" / result.ident
    assert not (result.private_data_dir / "env").exists()
    assert (result.artifacts_dir / "stdout").read_text().count("TASK [") == 2
    assert 0 < result.duration_s < 30
    # the project's callback_plugins were loaded (runner overrides ANSIBLE_CALLBACK_PLUGINS)
    assert json.loads(marker.read_text()) == {"run_id": result.ident, "operator": "alice"}
    # the environment was reduced to the allow-list
    command = json.loads((result.artifacts_dir / "command").read_text())
    assert "NOT_ALLOWED_ANYWHERE" not in command["env"]
    assert command["env"]["OPSBOOK_RUN_ID"] == result.ident
    assert "ANSIBLE_HOST_KEY_CHECKING" not in command["env"]  # ansible.cfg decides
    assert command["cwd"] == str(proj)
    assert command["command"][-1] == str(proj / "playbooks" / "ok.yml")


def test_environment_is_reduced_to_the_allow_list(
    proj: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOT_ALLOWED_ANYWHERE", "from-caller")
    result = opsbook.run("ok", "test", project_dir=proj)
    assert result.outputs["dropped_env"] == ""
    command = json.loads((result.artifacts_dir / "command").read_text())
    inherited = {k for k, v in command["env"].items() if os.environ.get(k) == v}
    assert inherited and all(env_allowed(k) for k in inherited), inherited

    monkeypatch.setenv("OPSBOOK_ENV_PASSTHROUGH", "NOT_ALLOWED_*")
    result = opsbook.run("ok", "test", project_dir=proj)
    assert result.outputs["dropped_env"] == "from-caller"


def test_failed_task(proj: Path) -> None:
    result = opsbook.run("fail", "test", project_dir=proj)
    assert (result.status, result.rc) == ("failed", 1)
    assert result.failures == [
        {"host": "localhost", "task": "Check the disk", "msg": "disk is full on purpose"}
    ]
    assert result.stats["localhost"]["failed"] == 1
    assert result.stats["localhost"]["ok"] == 1


def test_unreachable_host(proj: Path) -> None:
    result = opsbook.run("ping_all", "test", project_dir=proj)
    assert (result.status, result.rc) == ("unreachable", 3)
    assert result.stats["deadhost"]["unreachable"] == 1
    assert result.stats["localhost"]["ok"] == 1
    [failure] = result.failures
    assert (failure["host"], failure["task"]) == ("deadhost", "Ping")
    assert "ssh: connect to host 127.0.10.250 port 1: Connection refused" in failure["msg"]


def test_limit(proj: Path) -> None:
    result = opsbook.run("ping_all", "test", limit="localhost", project_dir=proj)
    assert (result.status, result.rc) == ("successful", 0)
    assert list(result.stats) == ["localhost"]
    assert result.limit == "localhost"


def _unique_sleep() -> str:
    """A sleep duration no other process uses: pgrep finds this run's sleep only."""
    return f"{37 + random.random():.6f}"


def _still_running(pattern: str) -> str:
    time.sleep(0.3)
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.strip()


def test_timeout_stops_quickly_and_kills_everything(proj: Path) -> None:
    seconds = _unique_sleep()
    started = time.monotonic()
    result = opsbook.run("sleep", "test", {"sleep_seconds": seconds}, timeout=2, project_dir=proj)
    elapsed = time.monotonic() - started
    assert (result.status, result.rc) == ("timeout", 4)
    assert elapsed < 8, elapsed
    assert _still_running(f"sleep {seconds}") == "", "the playbook's processes were killed"


def test_cancel_callback(proj: Path) -> None:
    seen: list[str] = []
    seconds = _unique_sleep()
    result = opsbook.run(
        "sleep", "test", {"sleep_seconds": seconds}, project_dir=proj,
        event_handler=lambda e: seen.append(e["event"]),
        cancel_callback=lambda: "playbook_on_task_start" in seen,
    )  # fmt: skip
    assert (result.status, result.rc) == ("canceled", 4)
    assert result.duration_s < 8
    assert _still_running(f"sleep {seconds}") == ""


def test_check_mode_changes_nothing(proj: Path, tmp_path: Path) -> None:
    target = tmp_path / "created-by-touch"
    result = opsbook.run("touch", "test", {"target": str(target)}, check=True, project_dir=proj)
    assert (result.status, result.rc, result.check) == ("successful", 0, True)
    assert result.stats["localhost"]["changed"] == 1
    assert not target.exists()
    command = json.loads((result.artifacts_dir / "command").read_text())
    assert "--check" in command["command"]

    result = opsbook.run("touch", "test", {"target": str(target)}, project_dir=proj)
    assert result.rc == 0 and target.exists()


def test_bad_input_raises_before_anything_runs(proj: Path) -> None:
    before = _run_dirs(proj)
    cases = [
        ({"runbook": "okk", "env": "test"}, "runbook"),
        ({"runbook": "site", "env": "test"}, "runbook"),
        ({"runbook": "_partial", "env": "test"}, "runbook"),
        ({"runbook": "ok", "env": "prod"}, "--env"),
        ({"runbook": "ok", "env": "test", "extravars": {"": 1}}, "-e"),
        ({"runbook": "ok", "env": "test", "extravars": {"bad-name": 1}}, "-e"),
        ({"runbook": "ok", "env": "test", "timeout": 0}, "--timeout"),
        ({"runbook": "ok", "env": "test", "limit": " "}, "--limit"),
        (
            {"runbook": "ok", "env": "test", "vault_password_file": "/nonexistent"},
            "vault_password_file",
        ),
    ]
    for kwargs, input_name in cases:
        with pytest.raises(OpsbookInputError) as info:
            opsbook.run(project_dir=proj, **kwargs)
        assert info.value.input_name == input_name, kwargs
    assert _run_dirs(proj) == before


def test_vault_password_file_passed_on_command_line(
    proj: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault_file = tmp_path / "vault-pass"
    vault_file.write_text("Vault-Pa55-9x8y7z\n")
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(vault_file))
    result = opsbook.run("ok", "test", project_dir=proj)
    assert result.rc == 0
    command = json.loads((result.artifacts_dir / "command").read_text())
    assert command["command"][1:3] == ["--vault-password-file", str(vault_file)]
    assert "ANSIBLE_VAULT_PASSWORD_FILE" not in command["env"]
    assert _files_with_secrets(result.private_data_dir, ("Vault-Pa55-9x8y7z",)) == {}


def test_rotation_keeps_last_runs(proj: Path, tmp_path: Path) -> None:
    runner = RunbookRunner(proj, runs_dir=tmp_path / "runs", keep_runs=1)
    idents = [runner.run("ok", "test").ident for _ in range(2)]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == idents[1:]


# --- secrets -------------------------------------------------------------------------
SECRET_VARS = {"database_url": DATABASE_URL, "api_token": API_TOKEN}


def test_secrets_never_left_on_disk_python_api(
    proj: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    during_run: dict[str, object] = {}

    def handler(event: dict) -> None:
        # a snapshot of the disk while ansible-playbook runs, before any task printed
        if event["event"] == "playbook_on_task_start" and not during_run:
            private = next(
                p for p in (proj / ".opsbook" / "runs").iterdir() if p.name == event["runner_ident"]
            )
            during_run["leaks"] = _files_with_secrets(private)
            during_run["env_files"] = sorted(p.name for p in (private / "env").iterdir())

    caplog.set_level(logging.DEBUG, logger="opsbook")
    result = opsbook.run("secret", "test", SECRET_VARS, event_handler=handler, project_dir=proj)

    assert (result.status, result.rc) == ("failed", 1)
    # the secrets did reach the playbook...
    assert result.outputs["token_sha"] == hashlib.sha256(API_TOKEN.encode()).hexdigest()
    assert result.outputs["env_sha"] == hashlib.sha256(ENV_SECRET.encode()).hexdigest()
    # ...but nothing holds them: not while running (the extravars file was gone as
    # soon as the playbook started), not afterwards, not the result
    assert during_run == {"leaks": {}, "env_files": ["settings"]}
    assert _files_with_secrets(result.private_data_dir) == {}
    assert _files_with_secrets(proj / ".opsbook") == {}
    assert not any(s in repr(result) for s in ALL_SECRETS)
    assert result.outputs["db_url"] == "********"
    assert result.failures[0]["msg"] == "cannot connect to ********"
    assert result.warnings == []
    # the artifacts are still useful: the careless task's output is there, redacted
    # the final scan covers every file, even those runner and opsbook did not write
    written = (result.artifacts_dir / "written-by-task.txt").read_text()
    assert written == f"{REDACTED} {REDACTED} {REDACTED}"
    stdout = (result.artifacts_dir / "stdout").read_text()
    assert "db=******** token=******** gv=******** env=********" in stdout
    lived = [r.getMessage() for r in caplog.records if "extravars file lived" in r.getMessage()]
    assert len(lived) == 1


def test_secrets_never_left_on_disk_cli(proj: Path, tmp_path: Path) -> None:
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text(f"api_token: {API_TOKEN}\n")
    args = ["run", "secret", "--env", "test", "-e", f"database_url={DATABASE_URL}"]
    proc = _cli(proj, *args, "-e", f"@{vars_file}", env={"AWS_SECRET_ACCESS_KEY": ENV_SECRET})
    assert proc.returncode == 1, proc.stderr
    for secret in ALL_SECRETS:
        assert secret not in proc.stdout and secret not in proc.stderr
    assert "cannot connect to ********" in proc.stdout
    assert _files_with_secrets(proj / ".opsbook") == {}


# --- CLI end to end ------------------------------------------------------------------
def test_cli_run_success_prints_progress_table_and_outputs(proj: Path) -> None:
    proc = _cli(proj, "run", "ok", "--env", "test", "-e", "count=3", "--reason", "cli test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "TASK Ping" in out and re.search(r"^  ok +localhost$", out, re.M)
    assert "\r" not in out and "\x1b" not in out  # not a TTY: plain lines
    assert re.search(r"^host +\| ok \| changed \| failed \| unreachable \| skipped$", out, re.M)
    assert re.search(
        r"^localhost +\|  2 \|       0 \|      0 \|           0 \|       0$", out, re.M
    )
    assert "Outputs:" in out and "  answer: 42" in out and "  reason: cli test" in out
    assert "  count_type: int" in out
    assert "Result: successful (exit 0)" in out
    assert proc.stderr == ""


@pytest.mark.parametrize(
    ("runbook", "extra", "code", "expected"),
    [
        ("fail", [], 1, r"^  failed +localhost: disk is full on purpose$"),
        ("ping_all", [], 3, r"^  unreachable +deadhost: "),
        ("sleep", ["--timeout", "1.5"], 4, r"^Result: timeout \(exit 4\)"),
        ("warn", [], 5, r"^Result: successful \(exit 5\)"),
        ("warn", ["-e", "verdict=ok"], 0, r"^Result: successful \(exit 0\)"),
    ],
)
def test_cli_exit_codes(
    proj: Path, runbook: str, extra: list[str], code: int, expected: str
) -> None:
    proc = _cli(proj, "run", runbook, "--env", "test", *extra)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert re.search(expected, proc.stdout, re.M), proc.stdout


def test_cli_sigint_cancels_cleanly(proj: Path) -> None:
    env = {**os.environ, "OPSBOOK_PROJECT_DIR": str(proj)}
    seconds = _unique_sleep()
    proc = subprocess.Popen(
        [str(OPSBOOK_BIN), "run", "sleep", "--env", "test", "-e", f"sleep_seconds={seconds}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("TASK Sleep long"):
            break
    proc.send_signal(signal.SIGINT)
    rest, _err = proc.communicate(timeout=15)
    assert proc.returncode == 4
    assert "Result: canceled (exit 4)" in rest
    assert _still_running(f"sleep {seconds}") == ""


@pytest.mark.parametrize(
    ("args", "input_name"),
    [
        (["run", "okk", "--env", "test"], "runbook"),
        (["run", "ok", "--env", "nope"], "--env"),
        (["run", "ok", "--env", "test", "-e", "novalue"], "-e"),
        (["run", "ok", "--env", "test", "-e", "=3"], "-e"),
        (["run", "ok", "--env", "test", "-e", "@/nonexistent/vars.yml"], "-e"),
        (["run", "ok", "--env", "test", "--timeout", "soon"], "--timeout"),
        (["run", "ok", "--env", "test", "--timeout", "-1"], "--timeout"),
        (["run", "ok"], "--env"),
    ],
)
def test_cli_bad_input(proj: Path, args: list[str], input_name: str) -> None:
    before = _run_dirs(proj)
    proc = _cli(proj, *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert input_name in lines[0]
    assert _run_dirs(proj) == before


def test_cli_bad_input_messages_help(proj: Path) -> None:
    assert "did you mean 'ok'?" in _cli(proj, "run", "okk", "--env", "test").stderr
    assert "known environments" in _cli(proj, "run", "ok", "--env", "prod").stderr
    assert "other, test" in _cli(proj, "run", "ok", "--env", "prod").stderr


def test_cli_list(proj: Path) -> None:
    proc = _cli(proj, "list")
    assert proc.returncode == 0
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names == ["fail", "ok", "ping_all", "secret", "sleep", "touch", "warn"]
    assert re.search(r"^ok +Succeed and publish outputs$", proc.stdout, re.M)


# --- with the project's real operation log -------------------------------------------
def test_real_oplog_records_the_run(
    proj: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real ansible.cfg and the collection's opsbook.runbooks.opsbook_oplog, unchanged:
    runner's ANSIBLE_CALLBACK_PLUGINS must not hide it, and the log gets our run id."""
    assert (REPO / "callback_plugins" / "opsbook_oplog.py").is_file()
    real = tmp_path / "real"
    real.mkdir()
    (real / "ansible.cfg").write_text((REPO / "ansible.cfg").read_text())
    (real / "collections").symlink_to(REPO / "collections")  # collections_path = collections:...
    (real / "playbooks").mkdir()
    (real / "playbooks" / "ok.yml").write_text(PLAYBOOKS["ok"])
    oplog = tmp_path / "oplog.jsonl"
    monkeypatch.setenv("OPSBOOK_OPLOG", str(oplog))
    monkeypatch.setenv("OPSBOOK_OPERATOR", "bob")

    result = opsbook.run(
        "ok", "test", SECRET_VARS, reason="oplog check",
        project_dir=real, inventory_root=proj / "inventories",
    )  # fmt: skip

    assert result.rc == 0, result
    [entry] = [json.loads(line) for line in oplog.read_text().splitlines()]
    assert (entry["id"], entry["operator"], entry["reason"]) == (result.ident, "bob", "oplog check")
    assert entry["playbook"] == "ok" and entry["env"] == "test"
    assert {"api_token", "database_url"} <= set(entry["extra_var_keys"])
    assert _files_with_secrets(tmp_path) == {}
