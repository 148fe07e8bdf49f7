"""Deploy state through Ansible against real servers: the deploy lock and the deploy ledger
(library/deploy_lock.py, library/deploy_ledger.py) on the lab's S3 server (moto, in its own
process) and on file://, the roles deploy_lock / deploy_ledger (staging gate) / notify (a
local HTTP server records the POSTed JSON), and playbooks/maintenance_mode.yml on this
file's own app hosts (127.0.10.51-53).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from opsbook.lab import AppHost, SshKeyPair, start_app_hosts, stop_all
from tests.harness import VENV_BIN, ansible_env, run_ansible
from tests.integration.stats_helper import run_with_stats
from tests.lab import S3_CREDENTIALS
from tests.loaders import PROJECT_ROOT, load_module_utils
from tests.webhook import Webhook

pytestmark = pytest.mark.integration

st = load_module_utils("opsbook_storage")
BUCKET = "opsbook-test"
PYTHON = sys.executable
SECRET_PATH = "/services/T0PSECRET/B0PSECRET/xoxSECRETtoken0123456789"
SHA_A = "a" * 64
SHA_B = "b" * 64


# =================================================================== helpers


@dataclass
class State:
    """One deploy state URL under test."""

    kind: str  # file | s3
    url: str
    endpoint: str | None

    def args(self) -> dict[str, Any]:
        return {"url": self.url, **({"s3_endpoint_url": self.endpoint} if self.endpoint else {})}

    def storage(self) -> Any:
        return st.open_storage(self.url, endpoint_url=self.endpoint)

    def lock_object(self, env: str) -> dict[str, Any] | None:
        found = self.storage().read_versioned(f"locks/{env}/deploy.json")
        return json.loads(found.data) if found else None


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "OPSBOOK_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["file", "s3"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> State:
    if request.param == "file":
        return State("file", f"file://{tmp_path / 'state'}", None)
    server = request.getfixturevalue("s3")
    return State("s3", f"s3://{BUCKET}/state-{uuid.uuid4().hex[:8]}", server.endpoint_url)


def adhoc_argv(module: str, args: dict[str, Any], check: bool = False) -> list[str]:
    argv = [
        str(VENV_BIN / "ansible"),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={PYTHON}",
        "-m",
        module if "." in module else f"opsbook.runbooks.{module}",
        "-a",
        json.dumps(args),
    ]
    return [*argv, "--check"] if check else argv


def parse_adhoc(stdout: str) -> dict[str, Any]:
    """The JSON result of `ansible localhost -m ...` ("localhost | CHANGED => {...}")."""
    _head, sep, body = stdout.partition(" => ")
    assert sep, stdout
    return json.loads(body[: body.rindex("}") + 1])


@dataclass
class ModuleRun:
    rc: int
    result: dict[str, Any]
    output: str


def run_module(
    module: str, args: dict[str, Any], tmp_path: Path, check: bool = False, **env: str
) -> ModuleRun:
    proc = run_ansible(
        adhoc_argv(module, args, check)[1:],
        env=ansible_env(tmp_path / "oplog.jsonl", env),
        timeout=120,
        tool="ansible",
    )
    return ModuleRun(proc.returncode, parse_adhoc(proc.stdout), proc.stdout + proc.stderr)


def lock_args(where: State, run_id: str, **kw: Any) -> dict[str, Any]:
    args = {**where.args(), "env": "production", "run_id": run_id, "owner": f"owner-{run_id}"}
    args.update(kw)
    return args


def write_playbook(tmp_path: Path, name: str, plays: list[dict[str, Any]]) -> Path:
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    return path


def run_local_playbook(
    tmp_path: Path,
    playbook: Path,
    extravars: dict[str, Any] | None = None,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = [str(playbook), "-i", "localhost,", "-c", "local"]
    argv += ["-e", f"ansible_python_interpreter={PYTHON}"]
    if extravars:
        vars_file = tmp_path / f"vars-{uuid.uuid4().hex[:6]}.json"
        vars_file.write_text(json.dumps(extravars))
        argv += ["-e", f"@{vars_file}"]
    return run_ansible(
        [*argv, *args],
        env=ansible_env(tmp_path / "oplog.jsonl", env),
        timeout=300,
        tool="ansible-playbook",
    )


# =================================================================== the lock module


@pytest.mark.parametrize("conditional_writes", ["auto", "never"])
def test_concurrent_acquisitions_exactly_one_wins(
    state: State, tmp_path: Path, conditional_writes: str
) -> None:
    # file:// ignores conditional_writes (it always links a complete temp file into place):
    # exactly one run must win there with either setting too.
    env = ansible_env(tmp_path / "oplog.jsonl")
    procs = {
        run_id: subprocess.Popen(
            adhoc_argv(
                "deploy_lock",
                lock_args(state, run_id, reason="race", conditional_writes=conditional_writes),
            ),
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for run_id in ("run-1", "run-2", "run-3")
    }
    outcomes = {}
    for run_id, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        outcomes[run_id] = (proc.returncode, parse_adhoc(stdout), stdout + stderr)
    winners = [run_id for run_id, (rc, _r, _o) in outcomes.items() if rc == 0]
    assert len(winners) == 1, {k: v[2] for k, v in outcomes.items()}
    [winner] = winners
    assert outcomes[winner][1]["action"] == "create"
    expected = "conditional writes" if conditional_writes == "auto" else "intent protocol"
    if state.kind == "s3":
        assert expected in outcomes[winner][1]["atomicity"]
    for run_id, (rc, result, output) in outcomes.items():
        if run_id != winner:
            assert rc != 0
            assert f"production is locked: the deploy lock is held by run {winner}" in output
            assert result["lock"]["run_id"] == winner
    assert state.lock_object("production")["run_id"] == winner
    if state.kind == "s3":
        assert state.storage().list("locks/production/intents/") == []


def test_refusal_names_owner_reason_expiry_and_how_to_break(state: State, tmp_path: Path) -> None:
    first = run_module("deploy_lock", lock_args(state, "run-A", reason="release 2.1.0"), tmp_path)
    assert first.rc == 0 and first.result["changed"], first.output
    refused = run_module("deploy_lock", lock_args(state, "run-B"), tmp_path)
    assert refused.rc != 0
    message = refused.result["msg"]
    for text in (
        "production is locked",
        "run run-A of owner-run-A",
        'reason "release 2.1.0"',
        "expires ",
        "nothing was changed",
        # the ansible process that took it (an ad-hoc command) has exited: a dead run's lock
        "is no longer running: that run crashed or was killed",
        "Break its lock: break_lock=true",
    ):
        assert text in message, message
    assert refused.result["holder_alive"] is False
    again = run_module("deploy_lock", lock_args(state, "run-A"), tmp_path)
    assert again.rc == 0 and not again.result["changed"] and again.result["action"] == "reenter"
    assert state.lock_object("production")["run_id"] == "run-A"


def test_expired_lock_is_taken_over_with_a_warning(state: State, tmp_path: Path) -> None:
    assert run_module("deploy_lock", lock_args(state, "run-A", ttl_s=1), tmp_path).rc == 0
    time.sleep(1.5)
    taken = run_module("deploy_lock", lock_args(state, "run-B"), tmp_path)
    assert taken.rc == 0, taken.output
    assert taken.result["action"] == "take_over"
    assert taken.result["previous"]["run_id"] == "run-A"
    assert "[WARNING]" in taken.output and "took over the expired lock of run run-A" in taken.output
    assert state.lock_object("production")["run_id"] == "run-B"


def test_break_lock_is_explicit_and_reported(state: State, tmp_path: Path) -> None:
    assert run_module("deploy_lock", lock_args(state, "run-A"), tmp_path).rc == 0
    broken = run_module("deploy_lock", lock_args(state, "run-B", break_lock=True), tmp_path)
    assert broken.rc == 0 and broken.result["action"] == "break", broken.output
    assert "broke the lock of run run-A" in broken.output
    # the operator's unlock: state=absent, break_lock=true, no run id
    unlock = run_module(
        "deploy_lock",
        {**state.args(), "env": "production", "state": "absent", "break_lock": True},
        tmp_path,
    )
    assert unlock.rc == 0 and unlock.result["released"]
    assert state.lock_object("production") is None


def test_release_by_a_non_owner_is_refused(state: State, tmp_path: Path) -> None:
    assert run_module("deploy_lock", lock_args(state, "run-A"), tmp_path).rc == 0
    other = run_module("deploy_lock", lock_args(state, "run-B", state="absent"), tmp_path)
    assert other.rc == 0 and not other.result["changed"] and other.result["action"] == "leave"
    assert "not by run run-B: left in place" in other.output and "[WARNING]" in other.output
    assert state.lock_object("production")["run_id"] == "run-A"
    mine = run_module("deploy_lock", lock_args(state, "run-A", state="absent"), tmp_path)
    assert mine.rc == 0 and mine.result["changed"] and mine.result["released"]
    assert state.lock_object("production") is None
    info = run_module(
        "deploy_lock", {**state.args(), "env": "production", "state": "info"}, tmp_path
    )
    assert info.rc == 0 and info.result["lock"] is None and not info.result["held"]


def test_check_mode_writes_nothing(state: State, tmp_path: Path) -> None:
    checked = run_module("deploy_lock", lock_args(state, "run-A"), tmp_path, check=True)
    assert checked.rc == 0 and checked.result["changed"] and not checked.result["acquired"]
    assert state.storage().list("") == []  # not even the S3 capability probe


def test_run_id_and_owner_come_from_opsbook_run(state: State, tmp_path: Path) -> None:
    args = {**state.args(), "env": "staging", "reason": "from the runner"}
    taken = run_module(
        "deploy_lock", args, tmp_path, OPSBOOK_RUN_ID="ident-42", OPSBOOK_OPERATOR="carol"
    )
    assert taken.rc == 0, taken.output
    assert taken.result["lock"]["run_id"] == "ident-42" and taken.result["lock"]["owner"] == "carol"
    missing = run_module("deploy_lock", args, tmp_path)
    assert missing.rc != 0 and "run_id is required to take the lock" in missing.result["msg"]


# =================================================================== the ledger module


def test_ledger_record_and_query(state: State, tmp_path: Path) -> None:
    record = {
        **state.args(),
        "env": "staging",
        "state": "record",
        "version": "2.1.0",
        "artifact_sha256": SHA_A,
        "release_id": "20240501T120000Z-2.1.0",
        "status": "succeeded",
        "run_id": "run-1",
        "hosts": ["app1", "app2"],
    }
    first = run_module("deploy_ledger", record, tmp_path)
    assert first.rc == 0 and first.result["changed"], first.output
    assert first.result["entry"]["status"] == "succeeded"
    again = run_module("deploy_ledger", record, tmp_path)
    assert again.rc == 0 and not again.result["changed"]
    checked = run_module("deploy_ledger", {**record, "status": "failed"}, tmp_path, check=True)
    assert checked.rc == 0 and checked.result["changed"]

    query = {**state.args(), "env": "staging", "version": "2.1.0"}
    found = run_module("deploy_ledger", {**query, "artifact_sha256": SHA_A}, tmp_path)
    assert found.rc == 0 and found.result["succeeded"] and found.result["count"] == 1
    other = run_module("deploy_ledger", {**query, "artifact_sha256": SHA_B}, tmp_path)
    assert other.result["succeeded"] is False
    assert other.result["succeeded_other_sha256"] == [SHA_A]
    prod = run_module("deploy_ledger", {**query, "env": "production"}, tmp_path)
    assert prod.result["succeeded"] is False and prod.result["count"] == 0
    entries = [i.key for i in state.storage().list("ledger/")]
    assert len(entries) == 1 and entries[0].startswith("ledger/staging/")


# =================================================================== roles: lock and gate


def lock_role_playbook(tmp_path: Path) -> Path:
    common = {
        "deploy_lock_url": "{{ state_url }}",
        "deploy_lock_env": "production",
        "deploy_lock_s3_endpoint_url": "{{ state_endpoint | default('') }}",
    }
    return write_playbook(
        tmp_path,
        "lock_roles",
        [
            {
                "name": "Take the lock",
                "hosts": "localhost",
                "gather_facts": False,
                "tasks": [
                    {
                        "name": "Acquire",
                        "ansible.builtin.import_role": {
                            "name": "opsbook.runbooks.deploy_lock",
                            "tasks_from": "acquire",
                        },
                        "vars": {
                            **common,
                            "deploy_lock_reason": "role test",
                            "deploy_lock_playbook": "deploy",
                        },
                    },
                    {
                        "name": "Show the lock",
                        "ansible.builtin.debug": {
                            "msg": "HELD {{ hostvars['localhost'].deploy_lock_held.run_id }}"
                        },
                    },
                    {
                        "name": "Stop here when asked",
                        "ansible.builtin.fail": {"msg": "stopping while holding the lock"},
                        "when": "stop_after_acquire | default(false) | bool",
                    },
                ],
            },
            {
                "name": "Release it (another play)",
                "hosts": "localhost",
                "gather_facts": False,
                "tasks": [
                    {
                        "name": "Release",
                        "ansible.builtin.import_role": {
                            "name": "opsbook.runbooks.deploy_lock",
                            "tasks_from": "release",
                        },
                        "vars": common,
                    }
                ],
            },
        ],
    )


@pytest.mark.parametrize("state", ["s3"], indirect=True)  # file://: module tests
def test_lock_role_acquires_and_releases_across_plays(state: State, tmp_path: Path) -> None:
    playbook = lock_role_playbook(tmp_path)
    extra = {"state_url": state.url, "state_endpoint": state.endpoint or ""}
    proc = run_local_playbook(tmp_path, playbook, {**extra, "stop_after_acquire": True})
    assert proc.returncode != 0
    held = state.lock_object("production")
    assert held is not None and held["reason"] == "role test" and held["playbook"] == "deploy"
    assert f"HELD {held['run_id']}" in proc.stdout  # a generated id: <UTC time>-<8 chars>

    refused = run_local_playbook(tmp_path, playbook, extra)
    assert refused.returncode != 0
    assert "production is locked" in refused.stdout
    assert "-e deploy_lock_break=true" in refused.stdout
    assert state.lock_object("production")["run_id"] == held["run_id"]

    broken = run_local_playbook(tmp_path, playbook, {**extra, "deploy_lock_break": True})
    assert broken.returncode == 0, broken.stdout
    assert "broke the lock of run " + held["run_id"] in broken.stdout + broken.stderr
    assert state.lock_object("production") is None  # acquired, then released in play 2

    clean = run_local_playbook(tmp_path, playbook, extra, env={"OPSBOOK_RUN_ID": "ident-7"})
    assert clean.returncode == 0 and "HELD ident-7" in clean.stdout
    assert state.lock_object("production") is None


def gate_playbook(tmp_path: Path) -> Path:
    return write_playbook(
        tmp_path,
        "gate",
        [
            {
                "name": "Staging gate",
                "hosts": "localhost",
                "gather_facts": False,
                "tasks": [
                    {
                        "name": "Record in the ledger when asked",
                        "ansible.builtin.include_role": {
                            "name": "opsbook.runbooks.deploy_ledger",
                            "tasks_from": "record",
                        },
                        "vars": {
                            "deploy_ledger_url": "{{ state_url }}",
                            "deploy_ledger_s3_endpoint_url": "{{ state_endpoint }}",
                            "deploy_ledger_env": "{{ record_env }}",
                            "deploy_ledger_version": "{{ app_version }}",
                            "deploy_ledger_artifact_sha256": "{{ sha }}",
                            "deploy_ledger_release_id": "{{ release_id }}",
                            "deploy_ledger_status": "{{ record_status }}",
                            "deploy_ledger_playbook": "deploy",
                        },
                        "when": "record_env is defined",
                    },
                    {
                        "name": "Check the gate",
                        "ansible.builtin.import_role": {
                            "name": "opsbook.runbooks.deploy_ledger",
                            "tasks_from": "check_staging_gate",
                        },
                        "vars": {
                            "deploy_ledger_url": "{{ state_url }}",
                            "deploy_ledger_s3_endpoint_url": "{{ state_endpoint }}",
                            "deploy_ledger_env": "{{ target_env }}",
                            "deploy_ledger_version": "{{ app_version }}",
                            "deploy_ledger_artifact_sha256": "{{ sha }}",
                            "deploy_ledger_skip_staging_gate": (
                                "{{ skip_staging_gate | default(false) | bool }}"
                            ),
                        },
                        "when": "target_env is defined",
                    },
                    {
                        "name": "Show the gate",
                        "ansible.builtin.debug": {
                            "msg": "GATE {{ deploy_ledger_staging_gate | to_json }}"
                        },
                        "when": "target_env is defined",
                    },
                ],
            }
        ],
    )


def gate_result(stdout: str) -> dict[str, Any]:
    line = next(line for line in stdout.splitlines() if "GATE {" in line)
    text = line.split("GATE ", 1)[1].strip().rstrip('"').replace('\\"', '"')
    return json.loads(text)


@pytest.mark.parametrize("state", ["s3"], indirect=True)  # file://: module tests
def test_staging_gate_refuses_then_allows(state: State, tmp_path: Path) -> None:
    playbook = gate_playbook(tmp_path)
    base = {
        "state_url": state.url,
        "state_endpoint": state.endpoint or "",
        "app_version": "2.1.0",
        "sha": SHA_A,
    }
    refused = run_local_playbook(tmp_path, playbook, {**base, "target_env": "production"})
    assert refused.returncode != 0
    for text in (
        "Refusing to deploy 2.1.0 (artifact sha256 aaaaaaaaaaaa...) to production",
        "it never succeeded in staging",
        "no entry of 2.1.0 in staging",
        "-e skip_staging_gate=true",
    ):
        assert text in refused.stdout, refused.stdout

    # a failed staging deploy does not open the gate
    failed = {**base, "record_env": "staging", "record_status": "failed", "release_id": "r1"}
    assert run_local_playbook(tmp_path, playbook, failed).returncode == 0
    still = run_local_playbook(tmp_path, playbook, {**base, "target_env": "production"})
    assert still.returncode != 0 and "1 failed" in still.stdout

    ok = {**base, "record_env": "staging", "record_status": "succeeded", "release_id": "r2"}
    assert run_local_playbook(tmp_path, playbook, ok).returncode == 0
    allowed = run_local_playbook(tmp_path, playbook, {**base, "target_env": "production"})
    assert allowed.returncode == 0, allowed.stdout
    gate = gate_result(allowed.stdout)
    assert gate["applies"] and gate["passed"] and not gate["skipped"]
    assert gate["msg"].startswith("staging gate passed: 2.1.0")

    # the same version rebuilt (another artifact) did not pass staging
    rebuilt = run_local_playbook(
        tmp_path, playbook, {**base, "sha": SHA_B, "target_env": "production"}
    )
    assert rebuilt.returncode != 0 and "it succeeded with another artifact" in rebuilt.stdout

    skipped = run_local_playbook(
        tmp_path,
        playbook,
        {**base, "app_version": "9.9.9", "target_env": "production", "skip_staging_gate": True},
    )
    assert skipped.returncode == 0, skipped.stdout
    assert "staging gate SKIPPED on request" in skipped.stdout
    assert gate_result(skipped.stdout)["skipped"] is True

    staging = run_local_playbook(
        tmp_path, playbook, {**base, "app_version": "9.9.9", "target_env": "staging"}
    )
    assert staging.returncode == 0
    assert gate_result(staging.stdout)["applies"] is False

    checked = run_local_playbook(
        tmp_path,
        playbook,
        {**base, "app_version": "9.9.9", "target_env": "production"},
        args=("--check",),
    )
    assert checked.returncode != 0 and "Refusing to deploy 9.9.9" in checked.stdout


# =================================================================== roles: notify


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(SECRET_PATH)
    try:
        yield hook
    finally:
        hook.close()


def notify_playbook(tmp_path: Path) -> Path:
    return write_playbook(
        tmp_path,
        "notify",
        [
            {
                "name": "Notify",
                "hosts": "localhost",
                "gather_facts": False,
                "tasks": [
                    {
                        "name": "Post",
                        "ansible.builtin.include_role": {"name": "opsbook.runbooks.notify"},
                        "vars": {
                            "notify_webhook_url": "{{ hook_url }}",
                            "notify_event": "{{ event }}",
                            "notify_title": "deploy 2.1.0 to production",
                            "notify_fields": {
                                "environment": "production",
                                "version": "2.1.0",
                                "hosts": ["app1", "app2"],
                            },
                            "notify_retries": 1,
                        },
                    },
                    {
                        "name": "Show",
                        "ansible.builtin.debug": {"msg": "DELIVERED={{ notify_delivered }}"},
                    },
                ],
            }
        ],
    )


def assert_secret_absent(tmp_path: Path, *texts: str) -> None:
    for text in texts:
        assert "SECRET" not in text, text
    oplog = tmp_path / "oplog.jsonl"
    if oplog.exists():
        assert "SECRET" not in oplog.read_text()


def test_notify_posts_the_payload_and_never_prints_the_url(
    webhook: Webhook, tmp_path: Path
) -> None:
    playbook = notify_playbook(tmp_path)
    proc = run_local_playbook(
        tmp_path,
        playbook,
        {"hook_url": webhook.url, "event": "success"},
        args=("-vvv",),
        env={"OPSBOOK_RUN_ID": "ident-5"},
    )
    assert proc.returncode == 0, proc.stdout
    assert "DELIVERED=True" in proc.stdout
    [(path, payload, content_type)] = webhook.posts
    assert path == SECRET_PATH and content_type == "application/json"
    assert payload["text"] == ":white_check_mark: deploy 2.1.0 to production succeeded"
    [attachment] = payload["attachments"]
    assert attachment["color"] == "good" and attachment["footer"] == "opsbook run ident-5"
    assert {f["title"]: f["value"] for f in attachment["fields"]} == {
        "environment": "production",
        "version": "2.1.0",
        "hosts": "app1, app2",
    }
    assert_secret_absent(tmp_path, proc.stdout, proc.stderr)


def test_notify_failure_only_warns_and_never_prints_the_url(
    webhook: Webhook, tmp_path: Path
) -> None:
    webhook.status = 500
    playbook = notify_playbook(tmp_path)
    proc = run_local_playbook(tmp_path, playbook, {"hook_url": webhook.url, "event": "failure"})
    assert proc.returncode == 0, proc.stdout
    output = proc.stdout + proc.stderr
    assert "[WARNING]" in output and "NOT delivered to http://127.0.0.1" in output
    assert "DELIVERED=False" in proc.stdout
    assert len(webhook.posts) == 2  # one retry
    assert webhook.posts[0][1]["attachments"][0]["color"] == "danger"
    assert_secret_absent(tmp_path, proc.stdout, proc.stderr)

    # nobody listening at all: still only a warning
    dead = f"http://127.0.0.1:9{SECRET_PATH}"
    proc = run_local_playbook(tmp_path, playbook, {"hook_url": dead, "event": "start"})
    assert proc.returncode == 0 and "NOT delivered" in proc.stdout + proc.stderr
    assert_secret_absent(tmp_path, proc.stdout, proc.stderr)


def test_notify_does_nothing_without_a_url_or_in_check_mode(
    webhook: Webhook, tmp_path: Path
) -> None:
    playbook = notify_playbook(tmp_path)
    off = run_local_playbook(tmp_path, playbook, {"hook_url": "", "event": "start"})
    assert off.returncode == 0 and "DELIVERED=False" in off.stdout
    checked = run_local_playbook(
        tmp_path, playbook, {"hook_url": webhook.url, "event": "start"}, args=("--check",)
    )
    assert checked.returncode == 0
    assert webhook.posts == []


# =================================================================== maintenance_mode.yml


@pytest.fixture(scope="module")
def own_hosts(lab_dir: Path, ssh_key: SshKeyPair) -> Iterator[list[AppHost]]:
    """Three app hosts of this file's own on 127.0.10.51-53."""
    hosts = start_app_hosts(
        3, lab_dir / "deploy-state-hosts", ssh_key, first_address=51, name_prefix="ds"
    )
    try:
        yield hosts
    finally:
        stop_all(hosts)


@pytest.fixture
def maint_inventory(make_inventory: Any, own_hosts: list[AppHost]) -> Iterator[Path]:
    inventory = make_inventory(
        env="test", app_hosts=own_hosts, database_url="postgresql://unused@127.0.0.1/none"
    )
    yield inventory
    for host in own_hosts:
        host.set_maintenance(False)


def statuses(hosts: list[AppHost]) -> list[int]:
    return [host.health().status for host in hosts]


def test_maintenance_mode_on_off(
    run_playbook: Any, tmp_path: Path, maint_inventory: Path, own_hosts: list[AppHost]
) -> None:
    assert statuses(own_hosts) == [200, 200, 200]
    started = time.monotonic()
    on = run_with_stats(
        run_playbook,
        tmp_path,
        "maintenance_mode",
        maint_inventory,
        {"maintenance": "on", "opsbook_reason": "migrate orders"},
    )
    on_s = time.monotonic() - started
    assert on.rc == 0, on.output
    assert statuses(own_hosts) == [503, 503, 503]
    for host in own_hosts:
        flag = (host.shared_dir / "maintenance").read_text()
        assert "reason: migrate orders" in flag
    report = on.stats["maintenance_mode"]
    assert report["state"] == "on" and report["check_mode"] is False
    assert report["hosts"] == {h.name: {"active": True, "changed": True} for h in own_hosts}

    again = run_with_stats(
        run_playbook, tmp_path, "maintenance_mode", maint_inventory, {"maintenance": "on"}
    )
    assert again.rc == 0 and all(s["changed"] == 0 for s in again.hosts.values()), again.hosts
    assert not any(v["changed"] for v in again.stats["maintenance_mode"]["hosts"].values())

    checked = run_with_stats(
        run_playbook,
        tmp_path,
        "maintenance_mode",
        maint_inventory,
        {"maintenance": "off"},
        check=True,
    )
    assert checked.rc == 0, checked.output
    assert statuses(own_hosts) == [503, 503, 503]  # --check changed nothing
    assert checked.stats["maintenance_mode"]["check_mode"] is True

    off = run_with_stats(
        run_playbook, tmp_path, "maintenance_mode", maint_inventory, {"maintenance": "off"}
    )
    assert off.rc == 0, off.output
    assert statuses(own_hosts) == [200, 200, 200]
    assert not any((h.shared_dir / "maintenance").exists() for h in own_hosts)
    assert off.stats["maintenance_mode"]["hosts"] == {
        h.name: {"active": False, "changed": True} for h in own_hosts
    }
    print(f"maintenance on for 3 hosts: {on_s:.1f} s")


def test_maintenance_mode_limit_and_check_mode_on(
    run_playbook: Any, tmp_path: Path, maint_inventory: Path, own_hosts: list[AppHost]
) -> None:
    checked = run_playbook(
        "maintenance_mode", maint_inventory, extravars={"maintenance": "on"}, check=True
    )
    assert checked.returncode == 0, checked.stdout
    assert statuses(own_hosts) == [200, 200, 200]
    one = run_playbook(
        "maintenance_mode",
        maint_inventory,
        extravars={"maintenance": True},
        args=("--limit", own_hosts[1].name),
    )
    assert one.returncode == 0, one.stdout
    assert statuses(own_hosts) == [200, 503, 200]
    off = run_playbook("maintenance_mode", maint_inventory, extravars={"maintenance": "OFF"})
    assert off.returncode == 0
    assert statuses(own_hosts) == [200, 200, 200]


@pytest.mark.parametrize(
    ("extravars", "shown"),
    [
        (None, "maintenance is required (switch maintenance mode on or off)"),
        ({"maintenance": "maybe"}, "maintenance='maybe' is not valid: maintenance accepts one"),
    ],
)
def test_maintenance_mode_refuses_a_missing_or_bad_value(
    run_playbook: Any,
    maint_inventory: Path,
    own_hosts: list[AppHost],
    extravars: dict[str, Any] | None,
    shown: str,
) -> None:
    proc = run_playbook("maintenance_mode", maint_inventory, extravars=extravars)
    assert proc.returncode != 0
    assert "maintenance_mode refused, nothing was changed: 1 problem with its inputs" in proc.stdout
    assert shown in proc.stdout, proc.stdout
    assert statuses(own_hosts) == [200, 200, 200]
