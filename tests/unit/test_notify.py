"""Notifications of every runbook without a server: module_utils/opsbook_notify.py's rendering
of an operation-log record (title, fields, summary lines, failures, limits) and the Slack
payload it makes, and the operation-log callback's settings (variables, OPSBOOK_NOTIFY_*,
events, fields redacted) and file lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.loaders import load_module_utils, load_plugin

notify = load_module_utils("opsbook_notify")
oplog = load_plugin("callback_plugins", "opsbook_oplog")


def record(**overrides: Any) -> dict[str, Any]:
    base = {
        "id": "run-7",
        "started": "2025-11-19T14:30:05.120Z",
        "finished": "2025-11-19T14:31:02.004Z",
        "duration_s": 56.884,
        "operator": "alice",
        "playbook": "backup",
        "env": "production",
        "reason": "nightly",
        "check_mode": False,
        "limit": None,
        "extra_var_keys": [],
        "status": "successful",
        "interrupted": None,
        "hosts": {"db1": {"ok": 5, "changed": 1, "failed": 0}},
        "failures": [],
        "outputs": {},
    }
    return {**base, **overrides}


# -- the record's notification --------------------------------------------------------


def test_success_names_the_run_and_its_fields() -> None:
    message = notify.record_message(
        record(outputs={"backup": {"backup_id": "20251119T143005Z", "verified": True}}),
        "success",
        {"version": "2.1.0", "empty": ""},
    )
    assert message["title"] == "backup succeeded on production"
    assert message["text"] == ":white_check_mark: backup succeeded on production"
    assert message["color"] == "good" and message["run_id"] == "run-7"
    assert message["fields"] == {
        "runbook": "backup",
        "environment": "production",
        "operator": "alice",
        "reason": "nightly",
        "duration": "56.9 s",
        "status": "successful",
        "check mode": "no",
        "version": "2.1.0",
    }
    assert message["lines"] == ["backup: backup_id 20251119T143005Z"]


def test_failure_puts_the_failures_first_and_says_how_it_ended() -> None:
    failures = [
        {"host": "app1", "task": "health | gate", "msg": "status 500"},
        {"host": "app2", "task": "health | gate", "msg": "status 502"},
        {"host": "app3", "task": "health | gate", "msg": "timeout"},
        {"host": "localhost", "task": "report | Fail", "msg": "Deploy of 3.0.0 rolled back"},
    ]
    message = notify.record_message(
        record(playbook="deploy", env="staging", status="failed", failures=failures,
               outputs={"deploy": {"status": "rolled_back", "lines": ["app1: failed"]}}),
        "failure",
    )  # fmt: skip
    assert message["title"] == "deploy FAILED on staging" and message["color"] == "danger"
    assert message["lines"] == [
        "failed: app1 | health | gate: status 500",
        "failed: app2 | health | gate: status 502",
        "... 1 more failure(s)",
        "failed: localhost | report | Fail: Deploy of 3.0.0 rolled back",
        "app1: failed",
    ]


@pytest.mark.parametrize(
    ("status", "interrupted", "title"),
    [
        ("canceled", "SIGTERM", "restore CANCELED on production"),
        ("timeout", "SIGTERM", "restore TIMED OUT on production"),
        ("unreachable", None, "restore FAILED (hosts unreachable) on production"),
    ],
)
def test_runs_that_did_not_succeed(status: str, interrupted: str | None, title: str) -> None:
    message = notify.record_message(
        record(playbook="restore", status=status, interrupted=interrupted), "failure"
    )
    assert message["title"] == title
    assert message["lines"][:1] == ([f"interrupted by {interrupted}"] if interrupted else [])


def test_start_check_mode_limit_and_no_env() -> None:
    start = {"id": "r", "playbook": "deploy", "operator": "bob", "env": None, "reason": None,
             "check_mode": True, "limit": "app1", "status": "started"}  # fmt: skip
    message = notify.record_message(start, "start")
    assert message["title"] == "deploy started (check mode)"
    assert message["text"].startswith(":rocket: ")
    assert message["fields"] == {"runbook": "deploy", "operator": "bob", "check mode": "yes",
                                 "limit": "app1"}  # fmt: skip
    assert message["lines"] == []


def test_a_warn_verdict_is_said_in_the_title_and_colour() -> None:
    outputs = {"health_check": {"verdict": "warn", "summary": "app1 ok\ndatabase: 85% used\n"}}
    message = notify.record_message(record(playbook="health_check", outputs=outputs), "success")
    assert message["title"] == "health_check succeeded on production - verdict warn"
    assert message["color"] == "warning" and message["text"].startswith(":warning:")
    assert message["fields"]["status"] == "successful (verdict warn)"
    assert message["lines"] == ["app1 ok", "database: 85% used"]


def test_summary_lines_prefer_summary_then_lines_then_scalar_fields() -> None:
    outputs = {
        "routine_checks": {"summary": ["disk ok", "tls: 12 days left"], "lines": ["not this"]},
        "deploy": {"lines": ["app1: deployed"], "status": "succeeded"},
        "backup": {"backup_id": "b-1", "verified": True, "sizes": {"a": 1}},
        "secrets": {"jwt_secret": "***", "ok": True, "status": "***"},
        "other": {"notes": "x" * 200, "count": 3, "name": "n"},
        "nothing": {"nested": {"a": 1}},
        "flag": True,
        "_hosts": {"app1": {"summary": ["per host, not shown"]}},
    }
    assert notify.summary_lines(outputs) == [
        "disk ok",
        "tls: 12 days left",
        "app1: deployed",
        "backup: backup_id b-1",
        "secrets: ok True",  # masked values are never shown
        "other: count 3, name n",  # no known field: the short scalars
        "flag: True",
    ]
    assert notify.summary_lines(None) == []


def test_lines_are_capped_in_number_and_length() -> None:
    outputs = {"x": {"summary": [f"line {i} " + "y" * 400 for i in range(30)]}}
    lines = notify.record_message(record(outputs=outputs), "success")["lines"]
    assert len(lines) == notify.MAX_LINES
    assert all(len(line) <= notify.LINE_LIMIT for line in lines)
    assert lines[-1] == f"... {30 - notify.MAX_LINES + 1} more line(s) in the operation log"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0 s"), (56.884, "56.9 s"), (252, "4 min 12 s"), (3725, "1 h 02 min"),
     (None, "-"), ("x", "-")],
)  # fmt: skip
def test_format_duration(seconds: Any, text: str) -> None:
    assert notify.format_duration(seconds) == text


def test_payload_carries_the_lines_and_the_colour() -> None:
    message = notify.record_message(
        record(outputs={"h": {"verdict": "warn", "summary": ["a", "b"]}}), "success"
    )
    payload = notify.build_payload({**message, "username": "opsbook"}, now=1714564800)
    [attachment] = payload["attachments"]
    assert payload["text"] == message["text"] and payload["username"] == "opsbook"
    assert attachment["text"] == "a\nb" and attachment["color"] == "warning"
    assert attachment["footer"] == "opsbook run run-7"
    assert {f["title"] for f in attachment["fields"]} >= {"runbook", "duration", "reason"}


# -- the callback's settings and file -------------------------------------------------


def _callback(monkeypatch: pytest.MonkeyPatch, **options: Any) -> Any:
    callback = oplog.CallbackModule()
    monkeypatch.setattr(callback, "_option", lambda name: options.get(name))
    callback._run = oplog.RunInfo(
        id="r", started=datetime.now(UTC), playbook="p", operator="o", check_mode=False,
        limit=None, secrets={"hunter2secret"},
    )  # fmt: skip
    return callback


def test_settings_from_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    callback = _callback(monkeypatch)
    variables = {
        "opsbook_notify_webhook_url": "https://hooks.example.com/T/B/tok",
        "opsbook_notify_file": "/tmp/n.jsonl",
        "opsbook_notify_start": "yes",
        "opsbook_notify_on": "start, failure, nope",
        "opsbook_notify_fields": {"version": "1.2", "db_password": "x", "note": "pw hunter2secret",
                                  "nested": {"a": 1}},
    }  # fmt: skip
    settings = callback._notify_settings(variables, SimpleNamespace())
    assert settings.webhook_url == "https://hooks.example.com/T/B/tok"
    assert "https://hooks.example.com/T/B/tok" in callback._run.secrets  # scrubbed from the log
    assert settings.file == "/tmp/n.jsonl" and settings.start is True
    assert settings.events == ("start", "failure") and settings.unknown_events == ["nope"]
    assert settings.fields == {"version": "1.2", "db_password": "***", "note": "pw ***"}
    assert settings.wants("start") and settings.wants("failure") and not settings.wants("success")


def test_options_win_over_variables_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    callback = _callback(
        monkeypatch, notify_file="/env/n.jsonl", notify_start=False, notify_on=["success"]
    )
    variables = {"opsbook_notify_file": "/var/n.jsonl", "opsbook_notify_start": True}
    settings = callback._notify_settings(variables, SimpleNamespace())
    assert settings.file == "/env/n.jsonl" and settings.start is False
    assert settings.events == ("success",) and not settings.webhook_url
    assert settings.wants("success") and not settings.wants("failure")
    default = _callback(monkeypatch)._notify_settings({}, SimpleNamespace())
    assert default.events == oplog.NOTIFY_EVENTS and default.start is False
    assert not any(default.wants(event) for event in oplog.NOTIFY_EVENTS)  # nowhere to send


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), ("false", False), ("YES", True), ("0", False), ("", None), (None, None),
     ("maybe", None)],
)  # fmt: skip
def test_as_bool(value: Any, expected: bool | None) -> None:
    assert oplog.as_bool(value) is expected


def test_file_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    callback = _callback(monkeypatch)
    path = tmp_path / "deep" / "n.jsonl"
    callback._notify = oplog.NotifySettings(file=str(path))
    callback._notify_guarded(record(), "success", stopped=False)
    [line] = path.read_text().splitlines()
    entry = json.loads(line)
    assert entry["event"] == "success" and entry["runbook"] == "backup"
    assert entry["env"] == "production" and entry["run_id"] == "run-7"
    assert entry["title"] == "backup succeeded on production"
    assert entry["fields"]["duration"] == "56.9 s" and entry["lines"] == []
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    # a relative path is the project's (the parent of playbooks/), as the oplog's default is
    callback._playbook_path = str(tmp_path / "proj" / "playbooks" / "backup.yml")
    callback._notify = oplog.NotifySettings(file="notes/n.jsonl")
    callback._notify_guarded(record(), "failure", stopped=False)
    assert json.loads((tmp_path / "proj" / "notes" / "n.jsonl").read_text())["event"] == "failure"


class Display:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.shown: list[str] = []

    def warning(self, text: str) -> None:
        self.warnings.append(text)

    def vv(self, text: str) -> None:
        self.shown.append(text)


def test_a_stopped_run_tries_once_and_briefly_and_nothing_ever_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    callback = _callback(monkeypatch)
    callback._display = display = Display()
    url = "https://hooks.example.com/T/B/secret-tok"
    callback._notify = oplog.NotifySettings(webhook_url=url)
    callback._run.secrets.add(url)
    sent: list[dict[str, Any]] = []

    def send(params: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        sent.append(params)
        problem = f"timed out posting to {url}"  # what a careless error could say
        return {"delivered": False, "status": None, "attempts": 1,
                "webhook": "https://hooks.example.com", "problem": problem}  # fmt: skip

    monkeypatch.setattr(oplog._NOTIFY, "send", send)
    callback._notify_end(record(status="canceled", interrupted="SIGTERM"), stopped=True)
    callback._notify_end(record(), stopped=False)
    assert [(p["timeout_s"], p["retries"]) for p in sent] == [(2.0, 0), (5.0, 1)]
    assert len(display.warnings) == 2 and "secret-tok" not in " ".join(display.warnings)
    assert display.warnings[0].startswith(
        "opsbook_oplog: notification (failure) NOT delivered to https://hooks.example.com"
    )

    monkeypatch.setattr(oplog._NOTIFY, "send", lambda *_: 1 / 0)
    callback._notify_end(record(), stopped=False)  # a bug of its own: a warning, not a failure
    assert display.warnings[-1] == "opsbook_oplog: notification (success) not sent: " + (
        "ZeroDivisionError: division by zero"
    )
    callback._notify = oplog.NotifySettings(webhook_url="ftp://hooks.example.com/secret-tok")
    callback._notify_end(record(), stopped=False)
    assert display.warnings[-1].endswith(
        "is not an http:// or https:// URL (value not shown: secret)"
    )
    assert "secret-tok" not in " ".join(display.warnings)


def test_each_playbook_of_a_command_line_records_only_its_own_outputs() -> None:
    first = {"_run": {"health_check": {"verdict": "ok"}}}
    second = {"_run": {"health_check": {"verdict": "ok"}, "db_health": {"verdict": "warn"}},
              "app1": {"x": 1}}  # fmt: skip
    assert oplog.custom_delta(first, None) == first
    assert oplog.custom_delta(second, first) == {
        "_run": {"db_health": {"verdict": "warn"}}, "app1": {"x": 1}
    }  # fmt: skip
    changed = {"_run": {"health_check": {"verdict": "fail"}}}
    assert oplog.custom_delta(changed, first) == changed
