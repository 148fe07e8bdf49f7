"""`opsbook history` on a crafted operation log: where the log is, the filters, the table,
--json (the records as the log holds them), --markdown (the Operation Logs Template), a
garbled line skipped with one warning, and bad filters refused naming the option (exit 2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from opsbook import cli, history
from opsbook.exitcodes import ExitCode, OpsbookInputError

NOW = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)


def rec(started: str, playbook: str, env: str = "production", **kw: Any) -> dict[str, Any]:
    base = {
        "id": f"id-{playbook}-{started[8:10]}{started[11:13]}",
        "started": started,
        "finished": started.replace(":05.000Z", ":50.000Z"),
        "duration_s": 45.0,
        "operator": "alice",
        "playbook": playbook,
        "env": env,
        "reason": "routine",
        "check_mode": False,
        "limit": None,
        "extra_var_keys": [],
        "status": "successful",
        "interrupted": None,
        "hosts": {"app1": {"ok": 4, "changed": 1, "failed": 0, "unreachable": 0}},
        "failures": [],
        "outputs": {},
    }
    return {**base, **kw}


DEPLOY_FAILURES = [
    {"host": "app1", "task": "switch | Health gate", "msg": "status 500"},
    {"host": "localhost", "task": "report | Fail", "msg": "Deploy of 1.4.2 rolled back"},
]
HEALTH = {
    "verdict": "warn",
    "summary": "app1 ok\ndatabase 85% of connections",
    "report_path": "/srv/.opsbook/reports/h.md",
}
RECORDS = [
    rec("2025-11-18T02:00:05.000Z", "backup",
        outputs={"backup": {"backup_id": "20251118T020005Z", "verified": True}}),
    rec("2025-11-19T14:30:05.000Z", "deploy", operator="bob", reason="release 1.4.2",
        status="failed", hosts={"app1": {"ok": 3, "changed": 2, "failed": 1, "unreachable": 0},
                                "app2": {"ok": 2, "changed": 0, "failed": 0, "unreachable": 0}},
        failures=DEPLOY_FAILURES,
        outputs={"deploy": {"status": "rolled_back", "lines": ["app1: failed, back on r1"]}}),
    rec("2025-11-19T15:00:05.000Z", "health_check", env="staging", check_mode=True,
        outputs={"health_check": HEALTH}),
    rec("2025-11-20T09:10:05.000Z", "restore", status="canceled", interrupted="SIGTERM", hosts={}),
    rec("2025-11-20T11:30:05.000Z", "backup", operator="cron"),
]  # fmt: skip


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "oplog.jsonl"
    lines = [json.dumps(r) for r in RECORDS]
    # newest first in the file (a long run finishes last), a torn line, a blank line, not-a-record
    lines = [lines[1], lines[0], '{"id": "torn", "started": "2025-11-19T1', "", *lines[2:], "[1]"]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["history", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["playbook"] + "@" + r["started"][5:10] for r in records]


def test_garbled_lines_are_skipped_with_one_warning(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--oplog", str(log), "--json")
    assert code == ExitCode.SUCCESS
    assert err.count("warning") == 1
    assert f"skipped 2 line(s) of {log}" in err and "(line 3, 8)" in err
    # --json: the records exactly as the log holds them, oldest first
    expected = [json.dumps(r) for r in RECORDS]
    assert out.splitlines() == expected


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"env": "staging"}, ["health_check@11-19"]),
        ({"runbook": ["backup"]}, ["backup@11-18", "backup@11-20"]),
        ({"runbook": "deploy,restore"}, ["deploy@11-19", "restore@11-20"]),
        ({"status": ["failed", "canceled"]}, ["deploy@11-19", "restore@11-20"]),
        ({"operator": "bob"}, ["deploy@11-19"]),
        ({"since": "2025-11-19T15:00Z"}, ["health_check@11-19", "restore@11-20", "backup@11-20"]),
        ({"until": "2025-11-19"}, ["backup@11-18", "deploy@11-19", "health_check@11-19"]),
        ({"since": "12h"}, ["restore@11-20", "backup@11-20"]),  # NOW - 12 h = 11-20 00:00
        ({"since": "2d", "until": "2025-11-20T10:00"}, ["deploy@11-19", "health_check@11-19",
                                                         "restore@11-20"]),
        ({"last": 2}, ["restore@11-20", "backup@11-20"]),
        ({"runbook": "backup", "env": "production", "last": 1}, ["backup@11-20"]),
        ({"env": "nowhere"}, []),
    ],
)  # fmt: skip
def test_filters(log: Path, options: dict[str, Any], expected: list[str]) -> None:
    entries = history.select(history.read_log(log), history.build_query(**options, now=NOW))
    assert ids([entry.record for entry in entries]) == expected


@pytest.mark.parametrize(
    ("options", "option", "words"),
    [
        ({"status": "ok"}, "--status", "unknown status ok (one of: successful, failed"),
        ({"since": "yesterday"}, "--since", "expected an ISO date or time"),
        ({"until": "11/19/2025"}, "--until", "got '11/19/2025'"),
        ({"since": "2025-11-20", "until": "2025-11-19"}, "--since", "is not before --until"),
        ({"last": 0}, "--last", "expected a number of runs >= 1, got 0"),
        ({"last": "x"}, "--last", "got 'x'"),
    ],
)
def test_bad_filters_name_the_option(options: dict[str, Any], option: str, words: str) -> None:
    with pytest.raises(OpsbookInputError) as raised:
        history.build_query(**options, now=NOW)
    assert raised.value.input_name == option and words in raised.value.problem


def test_bad_filter_exits_2_naming_it(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--oplog", str(log), "--since", "last tuesday")
    assert code == ExitCode.BAD_INPUT and out == ""
    assert err.startswith("opsbook: error: --since: expected an ISO date or time")
    with pytest.raises(SystemExit) as exited:  # argparse's own refusal
        run(capsys, "--oplog", str(log), "--json", "--markdown")
    assert exited.value.code == ExitCode.BAD_INPUT
    assert "--markdown: not allowed with argument --json" in capsys.readouterr().err


def test_table(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--oplog", str(log), "--runbook", "deploy,health_check,restore")
    assert code == ExitCode.SUCCESS
    header, deploy, health, restore = out.splitlines()
    assert header.split() == ["STARTED", "(UTC)", "RUNBOOK", "ENV", "STATUS", "DURATION",
                              "OPERATOR", "REASON", "FAILURE"]  # fmt: skip
    assert deploy.startswith("2025-11-19 14:30  deploy ")
    assert "failed " in deploy and "45.0 s" in deploy and " bob " in deploy
    assert deploy.endswith("app1: switch | Health gate: status 500 (+1 more)")
    assert "successful (check)" in health and "staging" in health
    assert restore.endswith("stopped by SIGTERM") and "canceled" in restore
    # the columns line up
    column = header.index("STATUS")
    assert [line[column:].split()[0] for line in (deploy, health, restore)] == [
        "failed", "successful", "canceled"
    ]  # fmt: skip
    code, out, _ = run(capsys, "--oplog", str(log), "--env", "nowhere")
    assert code == ExitCode.SUCCESS and out == f"no run in {log} matches\n"


def test_markdown_fills_the_operation_logs_template(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--oplog", str(log), "--markdown", "--since", "2025-11-19",
                       "--until", "2025-11-19")  # fmt: skip
    assert code == ExitCode.SUCCESS
    assert out.startswith("# Operation log\n\n2 runs (since 2025-11-19; until 2025-11-19), "
                          "2025-11-19 14:30 to 2025-11-19 15:00 UTC.\n")  # fmt: skip
    assert "## 2025-11-19 14:30 UTC: deploy on production (failed)\n" in out
    deploy = out.split("```")[1].strip().splitlines()
    assert deploy == [
        "Date/Time: 2025-11-19 14:30:05 UTC - 14:30:50 UTC",
        "Operation: deploy on production by bob, run id-deploy-1914",
        "Reason: release 1.4.2",
        "Impact: 2 host(s): failed app1; unchanged app2",
        "Duration: 45.0 s",
        "Issues: run failed",
        "  failed: app1 | switch | Health gate: status 500",
        "  failed: localhost | report | Fail: Deploy of 1.4.2 rolled back",
        "Follow-up: app1: failed, back on r1",
    ]
    health = out.split("```")[3].strip().splitlines()
    assert health[1] == (
        "Operation: health_check on staging (check mode) by alice, run id-health_check-1915"
    )
    assert health[3] == "Impact: check mode, nothing changed - 1 host(s): would change app1"
    assert health[5] == "Issues: verdict warn"
    assert health[6:] == ["Follow-up: app1 ok", "  database 85% of connections",
                          "  health_check report: /srv/.opsbook/reports/h.md"]  # fmt: skip


def test_markdown_of_an_interrupted_run_and_of_nothing(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(capsys, "--oplog", str(log), "--markdown", "--status", "canceled")
    block = out.split("```")[1]
    assert "Impact: not counted: stopped by SIGTERM (see Issues)" in block
    assert "Issues: run canceled (SIGTERM)" in block and "Follow-up: none" in block
    _, out, _ = run(capsys, "--oplog", str(log), "--markdown", "--runbook", "nope")
    assert out == "# Operation log\n\nNo runs recorded (runbook=nope).\n\n"


def test_where_the_log_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "proj"
    (project / "playbooks").mkdir(parents=True)
    (project / "ansible.cfg").write_text("[defaults]\n")
    monkeypatch.delenv("ANSIBLE_CONFIG", raising=False)
    environ = {"OPSBOOK_PROJECT_DIR": str(project)}
    assert history.oplog_path(environ=environ) == project / ".opsbook" / "oplog.jsonl"
    (project / "ansible.cfg").write_text("[callback_opsbook_oplog]\npath = logs/ops.jsonl\n")
    assert history.oplog_path(environ=environ) == project / "logs" / "ops.jsonl"
    environ["OPSBOOK_OPLOG"] = str(tmp_path / "env.jsonl")
    assert history.oplog_path(environ=environ) == tmp_path / "env.jsonl"
    assert history.oplog_path("given.jsonl", environ=environ) == Path("given.jsonl")


def test_a_missing_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPSBOOK_OPLOG", str(tmp_path / "none.jsonl"))
    code, out, err = run(capsys)
    assert code == ExitCode.SUCCESS and out == ""
    assert f"no operation log at {tmp_path / 'none.jsonl'}" in err
    assert history.query() == []
    code, _, err = run(capsys, "--oplog", str(tmp_path / "other.jsonl"))
    assert code == ExitCode.BAD_INPUT and "--oplog: " in err and "does not exist" in err


def test_query_from_python(log: Path) -> None:
    found = history.query(runbook="backup", oplog=log)
    assert [r["id"] for r in found] == ["id-backup-1802", "id-backup-2011"]
    assert found[0] == RECORDS[0]
