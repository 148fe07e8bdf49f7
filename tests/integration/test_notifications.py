"""Every runbook's notifications - start (when asked), success, failure - sent by the operation
log (callback_plugins/opsbook_oplog.py) when a real ansible-playbook run writes its record, to
a local Slack-compatible receiver (tests/webhook.py) and to a file. A webhook that answers 500
or is not there at all is one warning and changes nothing else; the webhook URL and the
database password are nowhere: not in -vvvv output, the notification file or the oplog."""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import PostgresCluster
from tests.harness import ansible_env, run_ansible
from tests.webhook import Webhook

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    with Webhook() as hook:
        yield hook


@pytest.fixture(autouse=True)
def _fresh_webhook(webhook: Webhook) -> None:
    webhook.posts.clear()
    webhook.status = 200


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def fields(payload: dict[str, Any]) -> dict[str, str]:
    return {f["title"]: f["value"] for f in payload["attachments"][0]["fields"]}


def assert_nowhere(secrets: list[str], texts: dict[str, str]) -> None:
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{secret[:12]}... in {name}"


def test_health_check_announces_its_start_and_success_to_the_webhook_and_the_file(
    run_playbook: Any, make_inventory: Any, tmp_path: Path, webhook: Webhook, pg: PostgresCluster
) -> None:
    notes = tmp_path / "private" / "notifications.jsonl"
    inventory = make_inventory(
        env="staging",
        extra_vars={
            "opsbook_notify_webhook_url": webhook.url,
            "opsbook_notify_file": str(notes),
            "opsbook_notify_start": True,
        },
    )
    proc = run_playbook(
        "health_check",
        inventory,
        extravars={"opsbook_reason": "notification test"},
        env={"OPSBOOK_OPERATOR": "notify-tester"},
        args=("-vvvv",),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    [record] = read_lines(run_playbook.oplog)
    summary = record["outputs"]["health_check"]["summary"].splitlines()

    start, success = webhook.payloads
    assert start["text"] == ":rocket: health_check started on staging"
    assert fields(start) == {
        "runbook": "health_check", "environment": "staging", "operator": "notify-tester",
        "reason": "notification test", "check mode": "no",
    }  # fmt: skip
    assert success["text"] == ":white_check_mark: health_check succeeded on staging"
    [attachment] = success["attachments"]
    assert attachment["color"] == "good" and attachment["footer"] == f"opsbook run {record['id']}"
    assert {**fields(success), "duration": "-"} == {
        "runbook": "health_check", "environment": "staging", "operator": "notify-tester",
        "reason": "notification test", "duration": "-", "status": "successful (verdict ok)",
        "check mode": "no",
    }  # fmt: skip
    assert fields(success)["duration"].endswith(" s")
    assert attachment["text"].splitlines() == [line for line in summary if line.strip()][:12]
    assert "Health check verdict: OK" in attachment["text"]

    # the same notifications in the file, private
    started, succeeded = read_lines(notes)
    assert (started["event"], succeeded["event"]) == ("start", "success")
    assert succeeded["title"] == "health_check succeeded on staging"
    assert succeeded["run_id"] == record["id"] and succeeded["env"] == "staging"
    assert succeeded["lines"] == attachment["text"].splitlines()
    assert stat.S_IMODE(notes.stat().st_mode) == 0o600
    assert stat.S_IMODE(notes.parent.stat().st_mode) == 0o700
    # at -vvvv the delivery is shown, by the webhook's scheme and host only
    port = webhook.server.server_address[1]
    assert f"notification (success) delivered to http://127.0.0.1:{port} (HTTP 200)" in proc.stdout
    assert_nowhere(
        [webhook.url, webhook.path, pg.password],
        {"stdout": proc.stdout, "stderr": proc.stderr, "file": notes.read_text(),
         "oplog": run_playbook.oplog.read_text()},
    )  # fmt: skip


def write_playbook(tmp_path: Path, name: str, play_vars: dict[str, Any], tasks: list) -> str:
    """A one-play playbook on the controller (a cheap run: only the callback is under test)."""
    play = {"name": name, "hosts": "localhost", "gather_facts": False, "connection": "local",
            "vars": play_vars, "tasks": tasks}  # fmt: skip
    path = tmp_path / "playbooks" / f"{name}.yml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps([play]))
    return str(path)


def run_local(tmp_path: Path, playbooks: list[str], *args: str) -> Any:
    env = ansible_env(tmp_path / "oplog.jsonl")
    return run_ansible([*playbooks, "-i", "localhost,", *args], env=env, tool="ansible-playbook")


WORK = [{"name": "Work", "ansible.builtin.debug": {"msg": "working"}}]


def test_a_webhook_answering_500_or_not_there_is_one_warning_and_nothing_else(
    tmp_path: Path, webhook: Webhook
) -> None:
    webhook.status = 500
    gone_port = closed_port()
    gone = f"http://127.0.0.1:{gone_port}{webhook.path}"
    playbooks = [
        write_playbook(tmp_path, "answers_500", {"opsbook_notify_webhook_url": webhook.url}, WORK),
        write_playbook(tmp_path, "not_there", {"opsbook_notify_webhook_url": gone}, WORK),
    ]
    # two runs on one command line: one record, one notification each
    proc = run_local(tmp_path, playbooks, "-vvvv")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    oplog = (tmp_path / "oplog.jsonl").read_text()
    assert [json.loads(line)["status"] for line in oplog.splitlines()] == ["successful"] * 2
    assert len(webhook.posts) == 2  # the 500, then its one retry
    assert webhook.payloads[0]["text"] == ":white_check_mark: answers_500 succeeded"
    output = " ".join((proc.stdout + proc.stderr).split())  # warnings are wrapped
    warnings = output.split("[WARNING]: ")[1:]
    assert len(warnings) == 2, warnings
    port = webhook.server.server_address[1]
    assert warnings[0].startswith(
        f"opsbook_oplog: notification (success) NOT delivered to http://127.0.0.1:{port} after"
        " 2 attempt(s): HTTP 500 (the run's outcome is unchanged)"
    )
    assert warnings[1].startswith(
        "opsbook_oplog: notification (success) NOT delivered to"
        f" http://127.0.0.1:{gone_port} after 2 attempt(s): "
    )
    assert "Connection refused" in warnings[1]
    assert_nowhere([webhook.url, gone, webhook.path], {"output": output, "oplog": oplog})


def test_a_failed_run_sends_a_failure_naming_the_failed_task(
    tmp_path: Path, webhook: Webhook
) -> None:
    tasks = [
        {"name": "Publish what was checked",
         "ansible.builtin.set_stats": {"data": {"widget": {"summary": ["1 of 2 widgets ok"]}}}},
        {"name": "Check the widget",
         "ansible.builtin.fail": {"msg": "widget 2 refused api_token=tok-123456789 as expired"}},
    ]  # fmt: skip
    play_vars = {"opsbook_notify_webhook_url": webhook.url, "opsbook_notify_on": "failure",
                 "opsbook_notify_start": True, "opsbook_env": "staging"}  # fmt: skip
    proc = run_local(tmp_path, [write_playbook(tmp_path, "widget", play_vars, tasks)])
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-2000:]
    [failure] = webhook.payloads  # start asked, but not among the events: no start, no success
    assert failure["text"] == ":x: widget FAILED on staging"
    [attachment] = failure["attachments"]
    assert attachment["color"] == "danger" and fields(failure)["status"] == "failed"
    assert attachment["text"].splitlines() == [
        "failed: localhost | Check the widget: widget 2 refused api_token=*** as expired",
        "1 of 2 widgets ok",
    ]
    # Ansible prints the task's message as it is; the notification and the oplog mask it
    oplog = (tmp_path / "oplog.jsonl").read_text()
    assert_nowhere(["tok-123456789"], {"notification": json.dumps(failure), "oplog": oplog})
