"""The routine checks runbook's pure parts: filter_plugins/opsbook_routine.py (each check, the
verdict, the report), the slow statements since a snapshot (library/pg_health.py), what
library/pg_restore_leftovers.py drops, and the small controller modules it writes with
(library/state_document.py, library/report_file.py) and pg_backup_info's stale_uploads, on
file:// storage in a temporary directory."""

from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.loaders import load_library, load_module_utils, load_plugin

rc = load_plugin("filter_plugins", "opsbook_routine")
pg_health = load_library("pg_health")
leftovers = load_library("pg_restore_leftovers")
state_document = load_library("state_document")
report_file = load_library("report_file")
backup_info = load_library("pg_backup_info")
storage_api = load_module_utils("opsbook_storage")

NOW = "2024-05-02T12:00:00Z"


def check(status: str, name: str = "disk", target: str = "app1") -> dict[str, Any]:
    return {"name": name, "target": target, "status": status, "detail": f"{name} is {status}"}


def defaults(module: Any, **given: Any) -> dict[str, Any]:
    params = {name: spec.get("default") for name, spec in module.argument_spec().items()}
    params.update(given)
    return params


# --------------------------------------------------------------------- verdict and report


@pytest.mark.parametrize(
    ("statuses", "verdict"),
    [([], "ok"), (["ok", "ok"], "ok"), (["ok", "warn"], "warn"), (["warn", "fail", "ok"], "fail")],
)
def test_the_verdict_is_the_worst_check(statuses: list[str], verdict: str) -> None:
    report = rc.routine_checks_report([check(s, target=f"h{i}") for i, s in enumerate(statuses)])
    assert report["verdict"] == verdict
    assert sum(report["counts"].values()) == len(statuses)


@pytest.mark.parametrize(
    ("verdict", "fail_on", "fails"),
    [("ok", "fail", False), ("warn", "fail", False), ("fail", "fail", True),
     ("ok", "warn", False), ("warn", "warn", True), ("fail", "warn", True),
     ("fail", "never", False), ("warn", "never", False)],
)  # fmt: skip
def test_what_fails_the_run(verdict: str, fail_on: str, fails: bool) -> None:
    """A warn leaves the run successful unless routine_checks_fail_on=warn."""
    assert rc.routine_checks_fails(verdict, fail_on) is fails
    report = rc.routine_checks_report([check(verdict)], fail_on=fail_on)
    assert report["fails"] is fails


def test_lines_summary_and_markdown() -> None:
    checks = [check("ok"), check("warn", "tls", "https://a"), check("fail", "backup", "s3://b/p")]
    report = rc.routine_checks_report(checks, env="production", at=NOW, check_mode=True)
    title = (
        "Routine checks of production: FAIL (1 fail, 1 warn, 1 ok) (check mode: nothing removed)"
    )
    assert report["lines"][0] == title and len(report["lines"]) == 4
    assert report["lines"][3].startswith("FAIL  backup s3://b/p")
    assert report["summary"] == [
        title, "WARN tls https://a: tls is warn", "FAIL backup s3://b/p: backup is fail"
    ]  # fmt: skip
    markdown = report["markdown"]
    assert markdown.startswith("# Routine checks: production\n\n- at: 2024-05-02T12:00:00Z\n")
    rows = [line for line in markdown.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| FAIL", "| WARN", "| OK"]  # worst first
    assert "Cleanup: on" in markdown


def test_the_markdown_stays_under_8_kb_keeping_the_worst_rows() -> None:
    many = [{**check("ok", target=f"h{i:03}"), "detail": "x" * 300} for i in range(60)]
    many.append({**check("fail", "backup", "s3://b"), "detail": "no backup at all"})
    report = rc.routine_checks_report(many)
    assert len(report["markdown"].encode()) <= 8000
    assert "| FAIL | backup | s3://b | no backup at all |" in report["markdown"]
    assert "more checks" in report["markdown"]
    assert len(report["checks"]) == 61  # set_stats keeps them all


def test_a_check_that_never_ran_on_its_host_fails() -> None:
    found = {
        "app1": {"disk": [check("ok", "disk", "app1")],
                 "cleanup_releases": [check("ok", "cleanup_releases", "app1")]},
        "localhost": {"tls": [check("ok", "tls", "")], "secrets": [check("ok", "secrets", "")]},
    }  # fmt: skip
    expected = {"app1": ["disk", "cleanup_releases"], "app2": ["disk", "cleanup_releases"],
                "localhost": ["tls", "secrets", "backup"]}  # fmt: skip
    report = rc.routine_checks_report(found, expected)
    assert [(c["name"], c["target"], c["status"]) for c in report["checks"]] == [
        ("disk", "app1", "ok"), ("disk", "app2", "fail"), ("tls", "", "ok"),
        ("backup", "localhost", "fail"), ("secrets", "", "ok"),
        ("cleanup_releases", "app1", "ok"), ("cleanup_releases", "app2", "fail"),
    ]  # fmt: skip
    missing = next(c for c in report["checks"] if c["target"] == "app2")
    assert (
        missing["detail"]
        == "not checked - it did not run on app2 (failed or unreachable before it)"
    )
    assert report["verdict"] == "fail"


# --------------------------------------------------------------------------------- disk

DF = """Filesystem     1024-blocks      Used Available Capacity Mounted on
/dev/sda1        100000000  79000000  21000000      79% /
/dev/sdb1         10000000   9500000    500000      95% /srv/app data
/dev/sda1        100000000  79000000  21000000      79% /
"""


def test_disk_usage_against_the_thresholds() -> None:
    [found] = rc.routine_checks_disk({"rc": 0, "stdout": DF}, "app1", 80, 90)
    assert found["status"] == "fail" and found["target"] == "app1"
    assert [fs["mount"] for fs in found["filesystems"]] == ["/", "/srv/app data"]  # each once
    assert found["detail"] == (
        "/ 79% used, 20.0 GiB free; /srv/app data 95% used, 0.5 GiB free (warn at 80%, fail at 90%)"
    )
    assert rc.routine_checks_disk({"rc": 0, "stdout": DF}, "h", 79, 96)[0]["status"] == "warn"
    assert rc.routine_checks_disk({"rc": 0, "stdout": DF}, "h", 96, 97)[0]["status"] == "ok"
    assert rc.routine_checks_disk({"rc": 0, "stdout": DF}, "h", 0, 100)[0]["status"] == "warn"


def test_disk_not_checked_is_a_failure() -> None:
    unreachable = {"unreachable": True, "msg": "Failed to connect to the host via ssh"}
    [found] = rc.routine_checks_disk(unreachable, "app3")
    assert found["status"] == "fail"
    assert found["detail"] == "not checked - unreachable: Failed to connect to the host via ssh"
    failed = {"rc": 1, "stdout": "", "stderr": "df: /data: No such file or directory"}
    assert rc.routine_checks_disk(failed, "h")[0]["detail"] == (
        "not checked - df failed: df: /data: No such file or directory"
    )
    assert rc.routine_checks_disk(None, "h")[0]["status"] == "fail"


# -------------------------------------------------------------------------------- backup


def backup(n: int, started: str, verified: bool = True, failed: bool = False) -> dict[str, Any]:
    return {"backup_id": f"app-2024050{n}T000000Z-000{n}", "started": started,
            "verified": verified, "verification_failed": failed}  # fmt: skip


def judge_backups(
    backups: list[dict[str, Any]], verify: Any = None, rpo: float = 24
) -> dict[str, Any]:
    [found] = rc.routine_checks_backup({"backups": backups}, verify, rpo, NOW, "app", "s3://b/p")
    return found


VERIFIED_AGAIN = {"verification": {"ok": True}, "changed": False}


def test_no_backup_or_none_verified_fails() -> None:
    assert judge_backups([]) == {
        "name": "backup", "target": "s3://b/p", "status": "fail",
        "detail": "no backup at all of app in s3://b/p",
    }  # fmt: skip
    found = judge_backups([backup(2, "2024-05-02T02:00:00Z", verified=False, failed=True)])
    assert found["status"] == "fail"
    assert found["detail"] == (
        "no verified backup of app (1 backup(s), the newest app-20240502T000000Z-0002 (failed its "
        "verification))"
    )
    [error] = rc.routine_checks_backup(None, error="storage: access denied", storage="s3://b/p")
    assert error["detail"] == "cannot read the backups: storage: access denied"


def test_the_newest_verified_backup_against_the_rpo_and_its_verification() -> None:
    fresh = judge_backups([backup(2, "2024-05-02T02:00:00Z")], VERIFIED_AGAIN)
    assert fresh["status"] == "ok" and fresh["age_hours"] == 10
    assert fresh["detail"] == (
        "newest verified backup app-20240502T000000Z-0002, 10.0 h old (RPO 24 h); re-verified: "
        "every object matches its manifest"
    )
    stale = judge_backups([backup(1, "2024-04-28T12:00:00Z")], VERIFIED_AGAIN)
    assert stale["status"] == "fail" and "4.0 days old (RPO 24 h)" in stale["detail"]
    assert "older than the RPO of 24 h: a restore now loses 4.0 days" in stale["detail"]
    minutes = judge_backups([backup(2, "2024-05-02T11:58:00Z")], rpo=0.01)
    assert minutes["status"] == "fail" and "2 min old (RPO 0.01 h)" in minutes["detail"]
    broken = {"verification": {"ok": False}, "msg": "verification of x FAILED: sha256 differs"}
    found = judge_backups([backup(2, "2024-05-02T02:00:00Z")], broken)
    assert found["status"] == "fail"
    assert "its re-verification failed: verification of x FAILED: sha256 differs" in found["detail"]
    skipped = judge_backups([backup(2, "2024-05-02T02:00:00Z")], {"skipped": True})
    assert skipped["status"] == "ok" and "re-verified" not in skipped["detail"]


def test_newer_backups_not_verified_warn() -> None:
    found = judge_backups(
        [backup(3, "2024-05-02T11:00:00Z", verified=False),
         backup(2, "2024-05-02T02:00:00Z")], VERIFIED_AGAIN,
    )  # fmt: skip
    assert found["status"] == "warn" and found["backup_id"] == "app-20240502T000000Z-0002"
    assert found["detail"].endswith(
        "newer backup(s) not verified: app-20240503T000000Z-0003 (unverified)"
    )


# ------------------------------------------------------------------------------- secrets


def test_secrets_due_warn_and_overdue_fail() -> None:
    assert rc.routine_checks_secrets({"secrets": []})[0]["detail"] == (
        "no secret configured (opsbook_secrets)"
    )
    rows = [{"name": "jwt", "due_in_days": 40}, {"name": "stripe", "due_in_days": 300}]
    ok = rc.routine_checks_secrets({"secrets": rows, "overdue": [], "due": [], "revoke_due": []})
    assert (
        ok[0]["status"] == "ok" and ok[0]["detail"] == "2 secret(s), none due; next: jwt in 40 days"
    )
    due = rc.routine_checks_secrets({"secrets": rows, "due": ["jwt"], "revoke_due": ["stripe"]})[0]
    assert due["status"] == "warn"
    assert due["detail"] == (
        "due within a week: jwt; previous value still accepted past its grace period: stripe; "
        "rotate with rotate_secrets.yml -e secrets=jwt; retire with rotate_secrets.yml "
        "-e rotation_step=revoke"
    )
    late = rc.routine_checks_secrets({"secrets": rows, "overdue": ["jwt"], "due": ["jwt"]})[0]
    assert late["status"] == "fail" and late["detail"].startswith("overdue: jwt; rotate with")
    assert rc.routine_checks_secrets(None, error="state: unreachable")[0]["status"] == "fail"


# ---------------------------------------------------------------------------- statements


def test_slow_statements() -> None:
    absent = {"connected": True, "statements_available": False, "notes": [
        "statements: pg_stat_statements is not installed in database app (skipped)"]}  # fmt: skip
    [found] = rc.routine_checks_statements(absent, database="app")
    assert (found["status"], found["target"]) == ("ok", "app")
    assert found["detail"] == "pg_stat_statements is not installed in database app (skipped)"

    slow = {"connected": True, "statements_available": True, "slowest_statements": [
        {"queryid": 1, "calls": 2, "mean_ms": 6000.0, "query": "SELECT pg_sleep($1)"},
        {"queryid": 2, "calls": 90, "mean_ms": 3.5, "query": "SELECT 1"}]}  # fmt: skip
    previous = {"taken_at": "2024-05-01T12:00:00Z", "statements": {"1": [1, 2.0, 1]}}
    [found] = rc.routine_checks_statements(slow, previous, 5000, "app")
    assert found["status"] == "warn" and found["since"] == "2024-05-01T12:00:00Z"
    assert found["detail"] == (
        "1 statement(s) at or over 5000 ms mean since the last check (2024-05-01T12:00:00Z): "
        "6000 ms mean x 2: SELECT pg_sleep($1); 3.5 ms mean x 90: SELECT 1"
    )
    [first] = rc.routine_checks_statements(slow, {}, 10000, "app")
    assert first["status"] == "ok"
    assert first["detail"].startswith("slowest overall (no earlier snapshot): 6000 ms mean x 2")
    down = {"connected": False, "error": "connection refused"}
    assert rc.routine_checks_statements(down)[0]["detail"] == (
        "not checked - cannot connect: connection refused"
    )


def test_statements_since_a_snapshot() -> None:
    rows = [  # queryid, calls, total ms, max ms, rows, query - cumulative, now
        (1, 10, 1000.0, 300.0, 10, "SELECT a"),  # 4 calls, 900 ms since: 225 ms mean
        (2, 5, 5000.0, 2000.0, 5, "SELECT b"),  # not called since
        (3, 2, 40.0, 30.0, 2, "SELECT c"),  # calls went down: reset, counted from zero
        (4, 1, 50.0, 50.0, 1, "SELECT d"),  # new
    ]
    since = {"1": [6, 100.0, 6], "2": [5, 5000.0, 5], "3": [7, 900.0, 7]}
    slowest, snapshot = pg_health.statements_since(rows, since, limit=5, max_chars=200)
    ranked = [(s["queryid"], s["calls"], s["total_ms"], s["mean_ms"], s["rows"]) for s in slowest]
    assert ranked == [(1, 4, 900.0, 225.0, 4), (4, 1, 50.0, 50.0, 1), (3, 2, 40.0, 20.0, 2)]
    assert slowest[0]["max_ms"] == 300.0 and slowest[0]["query"] == "SELECT a"
    assert snapshot == {"1": [10, 1000.0, 10], "2": [5, 5000.0, 5], "3": [2, 40.0, 2],
                        "4": [1, 50.0, 1]}  # fmt: skip
    first, _ = pg_health.statements_since(rows, {}, limit=2, max_chars=200)
    assert [s["queryid"] for s in first] == [2, 1]  # no snapshot: the slowest overall
    errors = pg_health.validate_params(defaults(pg_health, dsn="host=x", statements_since={}))
    assert errors == []


# ------------------------------------------------------------------------------ cleanups


def test_cleanup_details_by_mode() -> None:
    pruned = {"removed": [{"release_id": "0.8.0", "reason": "beyond keep_releases=1"}]}
    [done] = rc.routine_checks_releases(pruned, "app1", 1, "remove")
    assert done["removed"] == ["0.8.0 (beyond keep_releases=1)"] and done["status"] == "ok"
    assert done["detail"] == (
        "removed: 0.8.0 (beyond keep_releases=1); keep_releases=1, never current nor the "
        "previous good one"
    )
    assert rc.routine_checks_releases(pruned, "app1", 1, "check")[0]["detail"].startswith(
        "would remove (check mode): 0.8.0"
    )
    assert rc.routine_checks_releases(pruned, "app1", 1, "report")[0]["detail"].startswith(
        "would remove (routine_checks_cleanup=false: report only): 0.8.0"
    )
    [unreachable] = rc.routine_checks_releases(
        {"skipped": True}, "app3", 1, error="host unreachable"
    )
    assert (
        unreachable["status"] == "fail"
        and unreachable["detail"] == "not checked - host unreachable"
    )

    old, young = "app__opsbook_old_20240101T000000Z", "app__opsbook_old_20240501T000000Z"
    replaced = {"dropped": [old], "in_use": ["b__opsbook_old_x"],
                "not_dropped": [{"database": "c__opsbook_old_y", "error": "must be owner"}],
                "databases": [{"database": old, "age_days": 122.5},
                              {"database": young, "age_days": 1.5}]}  # fmt: skip
    [found] = rc.routine_checks_databases(replaced, 7)
    assert found["status"] == "warn"
    assert found["detail"] == (
        f"removed: {old} (older than 7 days); kept (younger, or in use): {young} (1.5 days old); "
        "in use, left in place: b__opsbook_old_x; could not drop c__opsbook_old_y: must be owner"
    )
    uploads = {"removed_uploads": ["db-1/data (multipart upload u1, started 2024-05-01T00:00:00Z)"],
               "warnings": ["could not remove db-2/data (...): access denied"]}  # fmt: skip
    [found] = rc.routine_checks_uploads(uploads, 60, storage="s3://b/p")
    assert found["status"] == "warn" and found["target"] == "s3://b/p"
    assert found["detail"].startswith("removed: db-1/data (multipart upload u1")
    assert "idle for over 60 min" in found["detail"]


def test_the_databases_replaces_kept_by_their_exact_names() -> None:
    names = ["app", "app__opsbook_old_20240101T000000Z", "app__opsbook_old_20240430T000000Z",
             "other__opsbook_old_20240101T000000Z", "app__opsbook_old_notatime",
             "app__opsbook_old_20241399T000000Z", "app_opsbook_old_20240101T000000Z"]  # fmt: skip
    now = datetime(2024, 5, 2, tzinfo=UTC)
    params = defaults(leftovers, dsn="host=x", older_than_days=7)
    chosen = leftovers.plan(names, {"other__opsbook_old_20240101T000000Z": 1}, params, now)
    assert [(d["database"], d["target"], d["age_days"]) for d in chosen["databases"]] == [
        ("app__opsbook_old_20240430T000000Z", "app", 2.0),
        ("other__opsbook_old_20240101T000000Z", "other", 122.0),
        ("app__opsbook_old_20240101T000000Z", "app", 122.0),
    ]
    assert chosen["drop"] == ["app__opsbook_old_20240101T000000Z"]  # never one in use
    assert chosen["in_use"] == ["other__opsbook_old_20240101T000000Z"]
    only = leftovers.plan(names, {}, {**params, "target_database": "other"}, now)
    assert only["drop"] == ["other__opsbook_old_20240101T000000Z"]
    listed = leftovers.plan(names, {}, {**params, "older_than_days": None}, now)
    assert listed["drop"] == [] and len(listed["databases"]) == 3
    assert leftovers.validate_params({**params, "older_than_days": 0}) == [
        "older_than_days must be >= 1 (days), got 0"
    ]


# ---------------------------------------------------------------- state, report, uploads


def test_state_document_round_trip(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'state'}"
    key = "routine_checks/local/pg_stat_statements-app.json"
    params = defaults(state_document, url=url, key=key)
    missing = state_document.execute(params, False)
    assert (missing["exists"], missing["data"], missing["changed"]) == (False, {}, False)
    document = {"taken_at": NOW, "statements": {"42": [10, 5200.0, 10]}}
    write = {**params, "state": "write", "data": document}
    assert state_document.execute(write, True)["changed"] is True  # check mode: not written
    assert state_document.execute(params, False)["exists"] is False
    written = state_document.execute(write, False)
    assert written["changed"] is True and written["location"] == f"{url}/{key}"
    assert state_document.execute(params, False)["data"] == document
    too_big = state_document.execute({**write, "max_bytes": 10}, False)
    assert too_big["failed"] is True and "over max_bytes=10" in too_big["msg"]
    (tmp_path / "state" / key).write_text("[1, 2]")
    assert "not a mapping" in state_document.execute(params, False)["msg"]
    bad = state_document.execute({**params, "key": "../x"}, False)
    assert bad["failed"] is True and "'..'" in bad["msg"]


def test_report_file_is_0600_in_a_0700_directory_and_never_overwritten(tmp_path: Path) -> None:
    directory = tmp_path / "reports"
    params = {"dir": str(directory), "runbook": "routine_checks", "env": "staging",
              "content": "# report\n"}  # fmt: skip
    first = report_file.execute(params, True)  # written in check mode too: it is output
    name = Path(first["path"]).name
    assert first["changed"] is False and first["bytes"] == 9
    assert name.startswith("routine_checks-staging-") and name.endswith("Z.md") and len(name) == 42
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(first["path"]).stat().st_mode) == 0o600
    moment = datetime(2024, 5, 2, 12, 0, 0, tzinfo=UTC)
    paths = [report_file.write_report(str(directory), "r", "e", b"x", moment) for _ in range(3)]
    assert [Path(p).name for p in paths] == [
        "r-e-20240502T120000Z.md", "r-e-20240502T120000Z-2.md", "r-e-20240502T120000Z-3.md"
    ]  # fmt: skip
    bad = report_file.execute({**params, "env": "../prod"}, False)
    assert bad["failed"] is True and "env '../prod' must be letters" in bad["msg"]


def test_stale_uploads_of_interrupted_backups(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'backups'}"
    files = storage_api.open_storage(url)
    left = files.open_writer("app-20240501T020000Z-0001/data.pgdump.zst")  # as a SIGKILL leaves it
    left.write(b"x" * 1000)
    old = time.time() - 7200
    os.utime(left.temp_path, (old, old))
    params = defaults(backup_info, storage_url=url, state="stale_uploads")
    listed = backup_info.execute(params, True)
    assert listed["changed"] is True and len(listed["removed_uploads"]) == 1
    assert left.temp_path.exists()  # check mode: listed only
    young = backup_info.execute({**params, "stale_after_minutes": 180}, False)
    assert young["removed_uploads"] == [] and left.temp_path.exists()
    removed = backup_info.execute(params, False)
    assert removed["removed_uploads"][0].startswith("app-20240501T020000Z-0001/data.pgdump.zst")
    assert not left.temp_path.exists() and removed["msg"].startswith("removed 1 unfinished")
    assert backup_info.execute(params, False)["changed"] is False
    both = backup_info.execute(
        {**params, "state": "select", "backup_id": "a", "before": "x"}, False
    )
    assert "mutually exclusive: backup_id|before" in both["msg"]
