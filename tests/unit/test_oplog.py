"""Unit tests of the operation log callback: redaction, record building, appending."""

from __future__ import annotations

import json
import multiprocessing
import os
import pwd
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.loaders import load_plugin

CONTRACT_FIELDS = [
    "id", "started", "finished", "duration_s", "operator", "playbook", "env", "reason",
    "check_mode", "limit", "extra_var_keys", "status", "interrupted", "hosts", "failures",
    "outputs",
]  # fmt: skip


oplog = load_plugin("callback_plugins", "opsbook_oplog")


# -- redaction ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:hunter2@h/db", "postgresql://u:***@h/db"),
        ("postgres://app:s3cr3t@db.example.com:5432/app?sslmode=require",
         "postgres://app:***@db.example.com:5432/app?sslmode=require"),
        ("connect to mysql://root:p@ss@h:3306/x failed",
         "connect to mysql://root:***@h:3306/x failed"),
        ('{"url": "postgresql://u:pw@h/db", "mail": "a@b"}',
         '{"url": "postgresql://u:***@h/db", "mail": "a@b"}'),
        ("s3://AKIA:secret/key@bucket/prefix", "s3://AKIA:***@bucket/prefix"),
        ("redis://:onlypw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("https://example.com/health", "https://example.com/health"),
        ("ssh://deploy@host:22", "ssh://deploy@host:22"),
        ("host=db password=hunter2 dbname=app", "host=db password=*** dbname=app"),
        ('{"api_token": "abc123", "user": "x"}', '{"api_token": "***", "user": "x"}'),
        ("--db-password=hunter2 --verbose", "--db-password=*** --verbose"),
        ("password authentication failed for user \"app\"",
         "password authentication failed for user \"app\""),
        ("", ""),
    ],
)  # fmt: skip
def test_redact_text_masks_passwords(text: str, expected: str) -> None:
    assert oplog.redact_text(text) == expected


def test_redact_text_scrubs_known_secret_values() -> None:
    text = "login as admin with hunter2 failed; retry hunter2"
    assert oplog.redact_text(text, {"hunter2"}) == "login as admin with *** failed; retry ***"


def test_redact_text_ignores_too_short_secrets() -> None:
    assert oplog.redact_text("a b c", {"a"}) == "a b c"


@pytest.mark.parametrize(
    "key",
    ["password", "DB_PASSWORD", "vault_db_passwd", "ssh_passphrase", "client-secret", "api_token",
     "api_key", "apikey", "private_key", "aws_credentials", "database_url", "sentry_dsn",
     "vault_stripe_key"],
)  # fmt: skip
def test_looks_secret(key: str) -> None:
    assert oplog.looks_secret(key)


@pytest.mark.parametrize(
    "key", ["user", "host", "opsbook_env", "app_base_url", "verdict", "use_vault_", 3, None]
)
def test_looks_secret_no(key: Any) -> None:
    assert not oplog.looks_secret(key)


def test_redact_masks_secret_keys_recursively() -> None:
    data = {
        "database": {"dsn": "postgresql://u:p@h/db", "ok": True, "latency_ms": 3.5},
        "apps": [{"host": "web1", "token": "abc"}, {"host": "web2", "credentials": {"a": 1}}],
        "Database_URL": "postgresql://u:p@h/db",
        "note": "see postgresql://u:hunter2@h/db",
        "count": 2,
        "nothing": None,
    }
    assert oplog.redact(data) == {
        "database": {"dsn": "***", "ok": True, "latency_ms": 3.5},
        "apps": [{"host": "web1", "token": "***"}, {"host": "web2", "credentials": "***"}],
        "Database_URL": "***",
        "note": "see postgresql://u:***@h/db",
        "count": 2,
        "nothing": None,
    }


def test_redact_returns_json_safe_copy() -> None:
    original = {"items": ("a", "b"), "raw": b"bytes", "when": datetime(2025, 1, 2, tzinfo=UTC)}
    result = oplog.redact(original)
    assert result == {"items": ["a", "b"], "raw": "bytes", "when": "2025-01-02 00:00:00+00:00"}
    json.dumps(result)
    assert original["items"] == ("a", "b")


def test_redact_never_decrypts_vaulted_values() -> None:
    class EncryptedString:
        def __str__(self) -> str:
            raise AssertionError("decrypted")

    assert oplog.redact({"x": EncryptedString()}) == {"x": "***"}


def test_redact_never_raises() -> None:
    class Exploding:
        def __str__(self) -> str:
            raise RuntimeError("boom")

    loop: dict[str, Any] = {}
    loop["self"] = loop
    assert oplog.redact(Exploding()) == "***"
    assert json.dumps(oplog.redact(loop))  # cut at MAX_DEPTH, no RecursionError
    assert oplog.redact_text(None) == "***"  # type: ignore[arg-type]


def test_secret_values_collects_secret_keys_and_url_passwords() -> None:
    variables = {
        "database_url": "postgresql://u:hunter2@h/db",
        "vault_db_password": "s3cr3tpw",
        "nested": {"api_token": ["tok-12345"], "plain": "not secret"},
        "backup_storage_url": "s3://key:urlpass@bucket/x",
        "templated_password": "{{ vault_other }}",
        "short_token": "ab",
        "opsbook_env": "staging",
    }
    assert oplog.secret_values(variables) == {
        "postgresql://u:hunter2@h/db", "hunter2", "s3cr3tpw", "tok-12345", "urlpass",
    }  # fmt: skip


def test_secret_values_include_vaulted_values() -> None:
    class EncryptedString:  # ansible.parsing.vault.EncryptedString decrypts on str()
        def __str__(self) -> str:
            return "decrypted-pw"

    class Undecryptable:
        def __str__(self) -> str:
            raise RuntimeError("no vault secret")

    Undecryptable.__name__ = "EncryptedString"
    variables = {"db": {"pw": EncryptedString()}, "other": Undecryptable()}
    assert oplog.secret_values(variables) == {"decrypted-pw"}


def test_truncate() -> None:
    assert oplog.truncate("abc", 5) == "abc"
    cut = oplog.truncate("x" * 1000)
    assert len(cut) == 500
    assert cut.endswith("...")


# -- failures -----------------------------------------------------------------


def test_failure_message_prefers_msg_and_adds_stderr() -> None:
    result = {"msg": "non-zero return code", "stderr": "psql: error: connection refused", "rc": 2}
    assert oplog.failure_message(result) == (
        "non-zero return code (stderr: psql: error: connection refused)"
    )
    assert oplog.failure_message({"msg": "", "stderr": "", "rc": 3}) == "rc=3"
    assert oplog.failure_message({"msg": "Failed to connect"}) == "Failed to connect"


def test_failure_message_of_a_loop_names_the_failed_item() -> None:
    result = {
        "msg": "One or more items failed",
        "results": [{"failed": False, "msg": "fine"}, {"failed": True, "msg": "disk full"}],
    }
    assert oplog.failure_message(result) == "One or more items failed: disk full"


def test_failure_message_is_only_the_censored_marker() -> None:
    censored = {"censored": "the output has been hidden ...", "changed": False}
    assert oplog.failure_message(censored) == oplog.CENSORED_MARKER
    assert oplog.failure_message({"msg": "token hunter2"}, no_log=True) == oplog.CENSORED_MARKER
    leaky = {"censored": "hunter2", "msg": "hunter2"}  # a module's own key: never copied
    assert "hunter2" not in oplog.failure_message(leaky)


def test_failure_entry_redacts_before_truncating() -> None:
    result = {"msg": "x" * 480 + " postgresql://u:hunter2secret@h/db"}
    entry = oplog.failure_entry("web1", "deploy | Switch", result)
    assert entry["host"] == "web1"
    assert entry["task"] == "deploy | Switch"
    assert len(entry["msg"]) <= oplog.MSG_LIMIT
    assert "hunt" not in entry["msg"]


def test_failure_entry_scrubs_known_secrets() -> None:
    entry = oplog.failure_entry("h", "t", {"msg": "bad login s3cr3tpw"}, {"s3cr3tpw"})
    assert entry["msg"] == "bad login ***"


# -- record -------------------------------------------------------------------


def _run(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "id": "run-1",
        "started": datetime(2025, 11, 19, 14, 30, 0, 120000, tzinfo=UTC),
        "playbook": "deploy",
        "operator": "alice",
        "check_mode": False,
        "limit": None,
        "env": "staging",
        "reason": "release 1.4.2",
        "extra_var_keys": ["opsbook_reason", "database_url"],
    }
    values.update(overrides)
    return oplog.RunInfo(**values)


def _counts(**overrides: int) -> dict[str, int]:
    return {name: overrides.get(name, 0) for name in oplog.COUNT_FIELDS}


def test_build_record_has_the_contract_fields_in_order() -> None:
    finished = datetime(2025, 11, 19, 14, 31, 2, 4000, tzinfo=UTC)
    hosts = {"web2": _counts(ok=3), "web1": _counts(ok=4, changed=1)}
    record = oplog.build_record(_run(), finished, 61.88449, hosts, [], {"health_check": {}})
    assert list(record) == CONTRACT_FIELDS
    assert record["started"] == "2025-11-19T14:30:00.120Z"
    assert record["finished"] == "2025-11-19T14:31:02.004Z"
    assert record["duration_s"] == 61.884
    assert record["status"] == "successful"
    assert list(record["hosts"]) == ["web1", "web2"]
    assert record["extra_var_keys"] == ["database_url", "opsbook_reason"]
    assert json.loads(oplog.record_line(record)) == record


def test_build_record_redacts_env_and_reason() -> None:
    run = _run(reason="rotate postgresql://u:hunter2@h/db", secrets={"s3cr3tpw"}, env="s3cr3tpw")
    record = oplog.build_record(run, datetime.now(UTC), 1.0, {}, [], {})
    assert record["reason"] == "rotate postgresql://u:***@h/db"
    assert record["env"] == "***"


def test_build_record_caps_failures() -> None:
    failures = [{"host": f"h{i}", "task": "t", "msg": "m"} for i in range(250)]
    record = oplog.build_record(_run(), datetime.now(UTC), 1.0, {}, failures, {})
    assert len(record["failures"]) == oplog.MAX_FAILURES
    assert record["failures"][-1]["msg"] == "151 more failures not recorded"


@pytest.mark.parametrize(
    ("hosts", "status"),
    [
        ({}, "successful"),
        ({"a": _counts(ok=1, ignored=1, rescued=1)}, "successful"),
        ({"a": _counts(ok=1), "b": _counts(failed=1)}, "failed"),
        ({"a": _counts(unreachable=1)}, "unreachable"),
        ({"a": _counts(unreachable=1), "b": _counts(failed=1)}, "failed"),
    ],
)
def test_run_status(hosts: dict[str, dict[str, int]], status: str) -> None:
    assert oplog.run_status(hosts) == status


def test_host_counts_and_delta() -> None:
    summary = {"ok": 5, "failures": 1, "unreachable": 0, "changed": 2, "skipped": 1,
               "rescued": 0, "ignored": 0}  # fmt: skip
    counts = oplog.host_counts(summary)
    assert counts == _counts(ok=5, failed=1, changed=2, skipped=1)
    before = _counts(ok=2, changed=2)
    assert oplog.counts_delta(counts, before) == _counts(ok=3, failed=1, skipped=1)
    assert oplog.counts_delta(counts, None) == counts


def test_outputs_from_custom() -> None:
    custom = {
        "_run": {"health_check": {"verdict": "ok", "database": {"dsn": "postgresql://u:p@h/d"}}},
        "web1": {"release": "1.4.2"},
        "web2": {},
    }
    assert oplog.outputs_from_custom(custom) == {
        "health_check": {"verdict": "ok", "database": {"dsn": "***"}},
        "_hosts": {"web1": {"release": "1.4.2"}},
    }
    assert oplog.outputs_from_custom({}) == {}


@pytest.mark.parametrize(
    ("playbook", "project"),
    [("/srv/opsbook/playbooks/deploy.yml", "/srv/opsbook"), ("/srv/adhoc/x.yml", "/srv/adhoc")],
)
def test_default_log_path(playbook: str, project: str) -> None:
    assert oplog.project_dir(playbook) == Path(project)
    assert oplog.default_log_path(playbook) == Path(project) / ".opsbook" / "oplog.jsonl"


def test_operator_and_run_id_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSBOOK_OPERATOR", "bot:deploys")
    monkeypatch.setenv("OPSBOOK_RUN_ID", "ident-7")
    assert oplog.operator_name() == "bot:deploys"
    assert oplog.run_id() == "ident-7"
    monkeypatch.delenv("OPSBOOK_OPERATOR")
    monkeypatch.delenv("OPSBOOK_RUN_ID")
    # else the login name: the one the session names, else the account's own
    monkeypatch.setenv("LOGNAME", "carol")
    assert oplog.operator_name() == "carol"
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    assert oplog.operator_name() == pwd.getpwuid(os.getuid()).pw_name

    def no_login_name() -> str:
        raise OSError("No username set in the environment")  # a uid without a passwd entry

    monkeypatch.setattr(oplog.getpass, "getuser", no_login_name)
    assert oplog.operator_name() == "unknown"
    ids = [oplog.run_id() for _ in range(3)]
    assert len(set(ids)) == 3
    assert [uuid.UUID(run_id).version for run_id in ids] == [4, 4, 4]


# -- appending ----------------------------------------------------------------


def test_append_line_creates_private_file_and_dirs(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "oplog.jsonl"
    oplog.append_line(path, b'{"n": 1}\n')
    oplog.append_line(path, b'{"n": 2}\n')
    assert path.read_text().splitlines() == ['{"n": 1}', '{"n": 2}']
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700


def _append_many(args: tuple[str, int]) -> None:
    path, worker = args
    for n in range(50):
        record = {"worker": worker, "n": n, "pad": "x" * 20000}
        oplog.append_line(Path(path), oplog.record_line(record))


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "oplog.jsonl"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(str(path), worker) for worker in range(4)])
    lines = path.read_bytes().splitlines()
    assert len(lines) == 200
    seen = {(record["worker"], record["n"]) for record in map(json.loads, lines)}
    assert len(seen) == 200


# -- the callback object --------------------------------------------------------


class _Display:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.lines: list[str] = []

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.warnings.append(msg)

    def display(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.lines.append(msg)


def _callback() -> tuple[Any, _Display]:
    callback = oplog.CallbackModule()
    display = _Display()
    callback._display = display
    return callback, display


def _failed_result(host: str, task: str, result: dict[str, Any], no_log: bool = False) -> Any:
    return SimpleNamespace(
        host=SimpleNamespace(get_name=lambda: host),
        task=SimpleNamespace(no_log=no_log, ignore_unreachable=False),
        task_name=task,
        result=result,
    )


def test_callback_writes_one_record_per_playbook(tmp_path: Path) -> None:
    from ansible.executor.stats import AggregateStats

    callback, display = _callback()
    playbook_dir = tmp_path / "playbooks"
    playbook = SimpleNamespace(_file_name=str(playbook_dir / "backup.yml"))
    stats = AggregateStats()
    callback.v2_playbook_on_start(playbook)
    stats.increment("ok", "db1")
    stats.increment("failures", "db1")
    callback.v2_runner_on_failed(_failed_result("db1", "backup | Dump", {"msg": "disk full"}))
    callback.v2_runner_on_failed(_failed_result("db1", "ignored", {"msg": "x"}), ignore_errors=True)
    callback.v2_runner_on_failed(_failed_result("db1", "quiet", {"msg": "pw"}, no_log=True))
    stats.set_custom_stats("backup", {"id": "b-1"})
    callback.v2_playbook_on_stats(stats)
    callback.v2_playbook_on_start(SimpleNamespace(_file_name=str(playbook_dir / "restore.yml")))
    stats.increment("ok", "db1")
    callback.v2_playbook_on_stats(stats)

    lines = (tmp_path / ".opsbook" / "oplog.jsonl").read_text().splitlines()
    first, second = (json.loads(line) for line in lines)
    assert display.warnings == []
    assert first["playbook"] == "backup"
    assert first["status"] == "failed"
    assert first["hosts"]["db1"] == _counts(ok=1, failed=1)
    assert first["failures"] == [
        {"host": "db1", "task": "backup | Dump", "msg": "disk full"},
        {"host": "db1", "task": "quiet", "msg": oplog.CENSORED_MARKER},
    ]
    assert first["outputs"] == {"backup": {"id": "b-1"}}
    assert second["playbook"] == "restore"
    assert second["status"] == "successful"
    assert second["hosts"] == {"db1": _counts(ok=1)}
    assert second["failures"] == []


def test_callback_counts_only_its_playbook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ansible.executor.stats import AggregateStats

    log = tmp_path / "oplog.jsonl"
    callback, _ = _callback()
    monkeypatch.setattr(callback, "_log_path", lambda: log)
    stats = AggregateStats()
    for name in ("one.yml", "two.yml"):
        callback.v2_playbook_on_start(SimpleNamespace(_file_name=name))
        stats.increment("ok", "web1")
        callback.v2_playbook_on_stats(stats)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["playbook"] for r in records] == ["one", "two"]
    assert [r["hosts"]["web1"]["ok"] for r in records] == [1, 1]


def test_callback_errors_become_warnings(tmp_path: Path) -> None:
    callback, display = _callback()
    callback.v2_playbook_on_start(SimpleNamespace(_file_name=str(tmp_path / "x.yml")))
    callback.v2_playbook_on_stats(object())  # not a stats object: must not raise
    callback.v2_runner_on_failed(object())
    assert display.warnings[0].startswith("opsbook_oplog: operation log not written: ")
    assert display.warnings[1].startswith("opsbook_oplog: operation log incomplete: ")
    assert len(display.warnings) == 2


def test_callback_warns_on_unwritable_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ansible.executor.stats import AggregateStats

    blocker = tmp_path / "file"
    blocker.write_text("")
    callback, display = _callback()
    monkeypatch.setattr(callback, "_log_path", lambda: blocker / "oplog.jsonl")
    callback.v2_playbook_on_start(SimpleNamespace(_file_name="x.yml"))
    callback.v2_playbook_on_stats(AggregateStats())
    assert len(display.warnings) == 1
    assert "operation log not written" in display.warnings[0]
    assert str(blocker) in display.warnings[0]


def test_callback_metadata() -> None:
    assert oplog.CallbackModule.CALLBACK_TYPE == "aggregate"
    assert oplog.CallbackModule.CALLBACK_NAME == "opsbook_oplog"
    assert oplog.CallbackModule.CALLBACK_NEEDS_ENABLED is True


# -- under AWX ----------------------------------------------------------------------------


def test_awx_meta_from_awx_extra_vars() -> None:
    fields, user = oplog.awx_meta(
        {"awx_job_id": "42", "awx_job_template_name": "opsbook-production-backup",
         "awx_user_name": "alice", "tower_job_id": 42}
    )  # fmt: skip
    assert (fields, user) == (
        {"awx_job_id": 42, "awx_job_template_name": "opsbook-production-backup"}, "alice",
    )  # fmt: skip
    # older names only; a scheduled job has no launching user: the schedule is named
    fields, user = oplog.awx_meta({"tower_job_id": 7, "tower_schedule_name": "nightly-backup"})
    assert fields == {"awx_job_id": 7, "awx_job_template_name": None,
                      "awx_schedule_name": "nightly-backup"}  # fmt: skip
    assert user == "schedule:nightly-backup"
    assert oplog.awx_meta({"awx_user_name": "alice"}) == ({}, None)  # no job id: not AWX


def test_awx_fields_follow_limit_in_the_record() -> None:
    run = _run()
    run.awx = {"awx_job_id": 42, "awx_job_template_name": "t"}
    record = oplog.build_record(run, datetime.now(UTC), 1.0, {}, [], {})
    keys = list(record)
    assert keys[keys.index("limit") + 1 : keys.index("extra_var_keys")] == [
        "awx_job_id", "awx_job_template_name",
    ]  # fmt: skip


def test_under_awx_the_record_is_printed_not_written_into_the_project(tmp_path: Path) -> None:
    from ansible.executor.stats import AggregateStats

    callback, display = _callback()
    callback.v2_playbook_on_start(SimpleNamespace(_file_name=str(tmp_path / "playbooks/x.yml")))
    callback._run.awx = {"awx_job_id": 42, "awx_job_template_name": "t"}
    callback._run.secrets.add("hunter22")
    callback._run.reason = "with hunter22 inside"
    callback.v2_playbook_on_stats(AggregateStats())

    assert not (tmp_path / ".opsbook").exists()
    [line] = display.lines
    assert line.startswith("OPSBOOK_OPLOG {")
    record = json.loads(line.removeprefix("OPSBOOK_OPLOG "))
    assert (record["awx_job_id"], record["reason"]) == (42, "with *** inside")
    [warning] = display.warnings
    assert "AWX job 42: no operation log file is configured" in warning
    assert "the record goes to the job output (the OPSBOOK_OPLOG line) only" in warning


def test_the_path_and_stdout_variables(tmp_path: Path) -> None:
    from ansible.executor.stats import AggregateStats

    callback, display = _callback()
    playbook = tmp_path / "project" / "playbooks" / "x.yml"
    callback.v2_playbook_on_start(SimpleNamespace(_file_name=str(playbook)))
    callback._run.awx = {"awx_job_id": 42, "awx_job_template_name": "t"}
    outside = tmp_path / "volume" / "oplog.jsonl"  # e.g. a volume mounted into the EE
    callback._log = oplog.LogSettings(path=str(outside), stdout=False)
    callback.v2_playbook_on_stats(AggregateStats())

    [record] = [json.loads(x) for x in outside.read_text().splitlines()]
    assert record["awx_job_id"] == 42
    assert display.lines == [] and display.warnings == []  # asked: a file, no line


def test_under_awx_a_log_file_in_the_project_copy_is_warned_about(tmp_path: Path) -> None:
    """A relative opsbook_oplog_path is in the job's copy of the project: AWX throws it away."""
    from ansible.executor.stats import AggregateStats

    project = tmp_path / "job_42" / "project"
    callback, display = _callback()
    callback.v2_playbook_on_start(SimpleNamespace(_file_name=str(project / "playbooks/x.yml")))
    callback._run.awx = {"awx_job_id": 42, "awx_job_template_name": "t"}
    callback._log = oplog.LogSettings(path="records/oplog.jsonl", stdout=False)
    callback.v2_playbook_on_stats(AggregateStats())

    assert (project / "records/oplog.jsonl").is_file()  # written all the same
    [warning] = display.warnings
    assert f"AWX job 42: the operation log file {project}/records/oplog.jsonl is inside" in warning
    assert "will not survive" in warning

    # the same relative path outside AWX: the project is the user's own, nothing to say
    callback, display = _callback()
    callback.v2_playbook_on_start(SimpleNamespace(_file_name=str(project / "playbooks/x.yml")))
    callback._log = oplog.LogSettings(path="records/oplog.jsonl", stdout=False)
    callback.v2_playbook_on_stats(AggregateStats())
    assert display.warnings == []


# -- AWX's extra vars are trusted only in an AWX job's process --------------------------------

AWX_JOB_VARS = {
    "awx_job_id": 42, "awx_job_template_name": "opsbook-production-backup",
    "awx_user_name": "alice", "awx_user_email": "alice@example.com", "awx_inventory_id": 3,
    "awx_project_revision": "abc123", "awx_workflow_job_id": 40, "tower_job_id": 42,
    "tower_user_name": "alice",
    # users' inputs that happen to start with awx_ (playbooks/awx_setup.yml's)
    "awx_setup_prefix": "opsbook", "opsbook_reason": "nightly",
}  # fmt: skip


def _play_start(callback: Any, extra_vars: dict[str, Any]) -> None:
    """v2_playbook_on_play_start with a play whose variable manager holds these extra vars."""
    manager = SimpleNamespace(
        extra_vars=extra_vars, _inventory=None, get_vars=lambda **_: dict(extra_vars)
    )
    callback.v2_playbook_on_play_start(
        SimpleNamespace(_uuid="play-1", _variable_manager=manager, vars={}, hosts="all")
    )


def test_awx_job_needs_the_job_id_in_the_environment() -> None:
    fields, user, claimed = oplog.awx_job(AWX_JOB_VARS, {"JOB_ID": "42"})
    assert (fields["awx_job_id"], user, claimed) == (42, "alice", {})
    for environ in ({}, {"JOB_ID": ""}, {"JOB_ID": "41"}):  # not AWX, or another job
        fields, user, claimed = oplog.awx_job(AWX_JOB_VARS, environ)
        assert (fields, user) == ({}, None)
        assert claimed == {"awx_job_id": 42, "awx_job_template_name": "opsbook-production-backup",
                           "awx_user_name": "alice"}  # fmt: skip
    assert oplog.awx_job({"opsbook_reason": "x"}, {"JOB_ID": "42"}) == ({}, None, {})


def test_a_claimed_awx_job_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ansible-playbook -e awx_job_id=1 -e awx_user_name=mallory, not in an AWX job: the
    operator stays who ran it, the claim is recorded as one."""
    from ansible.executor.stats import AggregateStats

    monkeypatch.delenv("JOB_ID", raising=False)
    monkeypatch.setenv("OPSBOOK_OPERATOR", "bob")
    callback, display = _callback()
    callback.v2_playbook_on_start(SimpleNamespace(_file_name=str(tmp_path / "playbooks/x.yml")))
    _play_start(callback, {"awx_job_id": 1, "awx_user_name": "mallory", "opsbook_reason": "r"})
    callback.v2_playbook_on_stats(AggregateStats())

    [record] = [json.loads(x) for x in (tmp_path / ".opsbook/oplog.jsonl").read_text().splitlines()]
    assert record["operator"] == "bob"
    assert "awx_job_id" not in record
    assert record["awx_claimed"] == {"awx_job_id": 1, "awx_user_name": "mallory"}
    keys = list(record)
    assert keys[keys.index("limit") + 1] == "awx_claimed"
    assert record["extra_var_keys"] == ["awx_job_id", "awx_user_name", "opsbook_reason"]
    assert display.lines == [] and display.warnings == []  # not AWX: no stdout line, a file


def test_in_an_awx_job_only_awx_own_extra_vars_are_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ansible.executor.stats import AggregateStats

    monkeypatch.setenv("JOB_ID", "42")
    monkeypatch.setenv("OPSBOOK_OPERATOR", "bob")
    callback, display = _callback()
    callback.v2_playbook_on_start(SimpleNamespace(_file_name=str(tmp_path / "playbooks/x.yml")))
    _play_start(callback, AWX_JOB_VARS)
    callback.v2_playbook_on_stats(AggregateStats())

    assert not (tmp_path / ".opsbook").exists()
    [record] = [json.loads(line.removeprefix("OPSBOOK_OPLOG ")) for line in display.lines]
    assert (record["operator"], record["awx_job_id"]) == ("alice", 42)
    assert "awx_claimed" not in record
    assert record["extra_var_keys"] == ["awx_setup_prefix", "opsbook_reason"]


def test_opsbook_run_refuses_the_extra_vars_the_callback_trusts() -> None:
    """src/opsbook/runner.py and the callback judge AWX's names by one rule: each refuses or
    leaves out exactly the names the other does."""
    from opsbook import runner
    from opsbook.exitcodes import OpsbookInputError

    for name in AWX_JOB_VARS:
        try:
            runner.validate_extravars({name: "x"})
            refused = False
        except OpsbookInputError:
            refused = True
        assert refused == oplog.is_awx_own_var(name), name
    assert {name for name in AWX_JOB_VARS if oplog.is_awx_own_var(name)} == {
        name for name in AWX_JOB_VARS if name.startswith(("awx_", "tower_"))
    } - {"awx_setup_prefix"}
