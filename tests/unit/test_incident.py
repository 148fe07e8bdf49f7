"""filter_plugins/opsbook_incident.py: the incident runbook's judgement - the probe's output, the
masking of secrets in log lines, the severity and why, the rollback decision, the report."""

from __future__ import annotations

from typing import Any

import pytest

from tests.loaders import load_plugin

fi = load_plugin("filter_plugins", "opsbook_incident")

NOW = "2026-01-10T12:00:00+00:00"
M = fi.MARKER


def probe_stdout(log: list[str] | None = None, used_kb: int = 30, avail_kb: int = 70) -> str:
    lines = [
        f"{M}df",
        "Filesystem 1024-blocks Used Available Capacity Mounted on",
        f"/dev/sda1 100 {used_kb} {avail_kb} {used_kb}% /",
        f"/dev/sda1 100 {used_kb} {avail_kb} {used_kb}% /",  # the deploy root, same filesystem
        "df: /srv/missing: No such file or directory",
        f"{M}meminfo",
        "MemTotal:       1000 kB",
        "MemAvailable:    250 kB",
        "SwapTotal:        0 kB",
    ]
    if log is not None:
        lines += [f"{M}log", *log]
    return "\n".join(lines) + "\n"


def probe(log: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    result = {"stdout": probe_stdout(log, **kw), "rc": 0, "changed": False}
    return fi.incident_probe(result, "/srv/app/shared/app.log")


def healthy(version: str = "1.1.0", latency: float = 20.0) -> dict[str, Any]:
    return {"status": 200, "latency_ms": latency, "version": version, "ok": True, "problems": []}


def down(problem: str = "/health status 500, expected 200") -> dict[str, Any]:
    return {
        "status": 500,
        "latency_ms": 5.0,
        "version": "1.1.0",
        "ok": False,
        "problems": [problem],
    }


def slow() -> dict[str, Any]:
    return {
        "status": 200,
        "latency_ms": 812.0,
        "version": "1.1.0",
        "ok": False,
        "problems": ["/health latency 812 ms over threshold 500 ms"],
    }


UNREACHABLE = {
    "unreachable": True,
    "msg": 'Task failed: Data could not be sent to remote host "10.0.0.2". Make sure this host '
    "can be reached over ssh: ssh: connect to host 10.0.0.2 port 22: Connection refused",
}
DB_OK = {
    "connected": True,
    "server_version": "15.8",
    "connections_used": 3,
    "max_connections": 20,
    "connections_available": 14,
    "connections_percent": 15.0,
    "connections_warn": False,
    "lock_waits": 0,
    "lock_chains": [],
    "long_queries": [],
}


def entry(minutes_ago: float, playbook: str = "deploy", status: str = "succeeded", **kw: Any):
    from datetime import datetime, timedelta

    moment = datetime.fromisoformat(NOW) - timedelta(minutes=minutes_ago)
    return {
        "recorded_at": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "playbook": playbook,
        "status": status,
        "version": kw.pop("version", "1.1.0"),
        "operator": "alice",
        "reason": "release",
        "release_id": "1.1.0-x",
        **kw,
    }


def ledger(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"entries": list(entries), "count": len(entries), "changed": False}


def assess(
    apps: dict[str, Any] | None = None,
    database: Any = DB_OK,
    ledger_result: Any = None,
    **settings: Any,
) -> dict[str, Any]:
    if apps is None:
        apps = {"app1": {"summary": healthy(), "probe": probe([])}}
    return fi.incident_assess(
        apps,
        database=database,
        ledger=ledger_result if ledger_result is not None else ledger(entry(600)),
        settings={"env": "production", "window_minutes": 120, **settings},
        now=NOW,
    )


# ----------------------------------------------------------------------- redaction


def test_redact_masks_secrets_and_keeps_the_rest() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJlLXZhbHVl"
    lines = [
        "connecting to postgresql://app:s3cr3t-pw@db:5432/app",
        "DATABASE_URL=postgres://u:p@h/db password=hunter22 user=bob",
        'GET /api/me Authorization: Bearer abcdefghijklmnop "api_key": "k-123456"',
        f"token {jwt} accepted",
        '07/Dec/2026 06:36:00 127.0.0.1 "GET /health HTTP/1.1" 200 -',
        "x" * 500,
    ]
    out = fi.incident_redact(lines)
    text = "\n".join(out)
    for secret in ("s3cr3t-pw", "hunter22", "abcdefghijklmnop", "k-123456", jwt, "u:p@"):
        assert secret not in text
    assert "postgresql://app:********@db:5432/app" in out[0]
    assert "user=bob" in out[1]
    assert out[4] == lines[4]
    assert len(out[5]) == fi.MAX_LINE_CHARS


# ----------------------------------------------------------------------- the probe


def test_probe_parses_disk_memory_and_the_log_masked() -> None:
    found = probe(["ok line", "ERROR boom password=abc123", '"GET /x HTTP/1.1" 502 -'])
    assert found["state"] == "checked" and found["reachable"] is True
    assert found["disks"] == [
        {
            "mount": "/",
            "filesystem": "/dev/sda1",
            "size_kb": 100,
            "avail_kb": 70,
            "used_percent": 30.0,
        }
    ]
    assert found["disk_errors"] == ["df: /srv/missing: No such file or directory"]
    assert found["memory"]["used_percent"] == 75.0
    assert found["log"]["path"] == "/srv/app/shared/app.log"
    assert found["log"]["lines"][1] == "ERROR boom password=********"
    assert found["log"]["error_lines"] == 2  # ERROR, and an HTTP 5xx


def test_probe_of_a_missing_log_and_of_an_unreachable_host() -> None:
    result = {"stdout": probe_stdout() + f"{M}log-error cannot read /x (no such file)\n"}
    missing = fi.incident_probe(result, "/x")
    assert missing["log"]["error"] == "cannot read /x (no such file)"
    assert missing["log"]["lines"] == []
    gone = fi.incident_probe(UNREACHABLE)
    assert gone["state"] == "unreachable" and gone["reachable"] is False
    assert gone["error"] == "connect to host 10.0.0.2 port 22: Connection refused"
    assert fi.incident_probe(None)["state"] == "missing"
    assert fi.incident_probe({"skipped": True})["state"] == "skipped"
    assert fi.incident_probe({"stdout": "", "stderr": "sh: not found"})["state"] == "failed"


def test_a_log_line_that_looks_like_a_marker_stays_in_the_log() -> None:
    found = probe([f"{M}df", "a"])
    assert found["log"]["lines"] == [f"{M}df", "a"]


# ----------------------------------------------------------------------- severity


def test_all_healthy_is_no_incident() -> None:
    report = assess()
    assert report["severity"] == "none" and report["verdict"] == "ok"
    assert report["reasons"] == [] and report["status"] == "Monitoring"
    assert report["gate"] == {"checked": True, "ok": True, "failing": []}
    assert report["deploys"]["last_deploy"]["version"] == "1.1.0"
    assert report["deploys"]["last_deploy"]["ago"] == "10 h"


@pytest.mark.parametrize(
    ("apps", "severity", "reason"),
    [
        (
            {"a1": {"summary": healthy()}, "a2": {"summary": down()}},
            "P1",
            "a2 is down (1 of 2 app hosts): /health status 500",
        ),
        ({"a1": {"summary": down()}, "a2": {"summary": down()}}, "P0", "no app host answers"),
        ({"a1": {"summary": slow()}}, "P2", "a1 answers slowly: /health latency 812 ms"),
        (
            {"a1": {"summary": healthy(), "probe": fi.incident_probe(UNREACHABLE)}},
            "P1",
            "a1 cannot be reached over SSH (connect to host",
        ),
        (
            {"a1": {"summary": healthy(), "probe": probe([], used_kb=95, avail_kb=5)}},
            "P1",
            "disk /",
        ),
        ({"a1": {"summary": healthy(), "probe": probe([], used_kb=85, avail_kb=15)}}, "P2", "85%"),
    ],
)
def test_app_and_host_findings_set_the_severity(apps: Any, severity: str, reason: str) -> None:
    report = assess(apps)
    assert report["severity"] == severity
    assert any(reason in r for r in report["reasons"]), report["reasons"]


def test_an_unreachable_host_that_still_serves_is_p1_with_users_unaffected() -> None:
    report = assess({"a1": {"summary": healthy(), "probe": fi.incident_probe(UNREACHABLE)}})
    assert report["apps"]["a1"]["ssh"] == "unreachable"
    assert report["impact"].startswith("No failing request seen by the checks yet")
    assert report["headline"] == "a1 cannot be reached over SSH"


@pytest.mark.parametrize(
    ("database", "severity", "reason"),
    [
        ({"connected": False, "error": "connection refused"}, "P0", "the database is unreachable"),
        (
            {
                **DB_OK,
                "lock_waits": 1,
                "lock_chains": [
                    {
                        "root": {"pid": 100, "state": "idle in transaction", "query": "UPDATE t"},
                        "blocked": [{"pid": 101, "wait_s": 30.2}],
                        "max_wait_s": 30.2,
                    }
                ],
            },
            "P1",
            "blocking lock chain: pid 100",
        ),
        ({**DB_OK, "connections_available": 0, "connections_used": 17}, "P1", "no connection slot"),
        (
            {**DB_OK, "connections_warn": True, "connections_percent": 85.0},
            "P2",
            "connections at 85%",
        ),
        (
            {
                **DB_OK,
                "long_queries": [
                    {"pid": 7, "state": "active", "duration_s": 73.2, "query": "SELECT"}
                ],
            },
            "P2",
            "1 long-running session(s), the longest pid 7",
        ),
    ],
)
def test_database_findings_set_the_severity(database: Any, severity: str, reason: str) -> None:
    report = assess(database=database)
    assert report["severity"] == severity
    assert any(reason in r for r in report["reasons"]), report["reasons"]


def test_what_could_not_be_checked_is_listed_and_does_not_raise_the_severity() -> None:
    report = assess(
        database={"unreachable": True, "msg": "ssh: connect refused"},
        ledger_result={"failed": True, "msg": "the S3 endpoint http://127.0.0.1:1 is unreachable"},
    )
    assert report["severity"] == "none"
    assert any("could not be read" in u and "127.0.0.1:1" in u for u in report["unknowns"])
    assert any("dbadmin host could not be reached" in u for u in report["unknowns"])
    assert any(line.startswith("not checked: the deploy ledger") for line in report["summary"])
    assert "Fix access to opsbook_state_url" in " ".join(report["next_steps"])
    unset = assess(database=None, database_configured=False)
    assert "database_url is not set" in unset["unknowns"][0]


def test_a_recent_failed_deploy_is_p1_and_an_old_one_is_not() -> None:
    failed = assess(ledger_result=ledger(entry(20, status="failed")))
    assert failed["severity"] == "P1"
    assert "a recent deploy failed: 1.1.0 20 min ago by alice" in failed["reasons"][0]
    assert assess(ledger_result=ledger(entry(300, status="failed")))["severity"] == "none"


# ----------------------------------------------------------------------- mitigation

BROKEN = {"a1": {"summary": healthy()}, "a2": {"summary": down()}}
RB = {"mitigate": "rollback"}
ROLLED = ("rollback", "rolled_back")


def test_rollback_when_asked_recent_and_the_gate_fails() -> None:
    report = assess(BROKEN, ledger_result=ledger(entry(12)), mitigate="rollback")
    decision = report["mitigation"]
    assert decision["rollback"] is True and decision["decision"] == "rollback"
    assert decision["reason"].startswith("rolling back through rollback.yml: the last deploy")
    assert "(1.1.0, 12 min ago, by alice) is within the 120-minute window" in decision["reason"]
    assert "a2: /health status 500" in decision["reason"]
    assert report["status"] == "Identified"
    check = assess(BROKEN, ledger_result=ledger(entry(12)), mitigate="rollback", check_mode=True)
    assert check["mitigation"]["rollback"] is False  # decided, but rollback.yml is not run
    assert check["mitigation"]["decision"] == "rollback"
    assert check["mitigation"]["reason"].startswith(
        "would roll back through rollback.yml (--check: not run): the last deploy (1.1.0, 12 min"
    )


@pytest.mark.parametrize(
    ("apps", "entries", "settings", "why"),
    [
        (BROKEN, [entry(12)], {}, "no mitigation asked"),
        (
            BROKEN,
            [entry(180)],
            RB,
            "(1.1.0, 3 h ago, by alice) is older than the 120-minute window",
        ),
        (BROKEN, [entry(1)], {**RB, "window_minutes": 0}, "older than the 0-minute window"),
        (None, [entry(12)], RB, "the health gate passes now"),
        (BROKEN, [entry(12), entry(5, *ROLLED)], RB, "was rolled back already (5 min ago)"),
        (BROKEN, [entry(12, status="failed")], RB, "did not go live (status failed)"),
        (BROKEN, [entry(12, *ROLLED)], RB, "the ledger shows no deploy"),
        ({}, [entry(12)], RB, "no app host or app_base_url to gate on"),
    ],
)
def test_no_rollback_says_why(apps: Any, entries: Any, settings: Any, why: str) -> None:
    report = assess(apps, ledger_result=ledger(*entries), **settings)
    assert report["mitigation"]["rollback"] is False
    assert why in report["mitigation"]["reason"], report["mitigation"]["reason"]


def test_no_rollback_when_the_ledger_cannot_be_read() -> None:
    report = assess(BROKEN, ledger_result={"failed": True, "msg": "boom"}, mitigate="rollback")
    assert report["mitigation"]["reason"] == (
        "not rolled back: the deploy ledger could not be read, so whether the last deploy is "
        "recent is unknown"
    )


def test_the_outcome_of_the_rollback() -> None:
    report = assess(BROKEN, ledger_result=ledger(entry(12)), mitigate="rollback")
    done = fi.incident_outcome(
        report, {"ok": True, "versions": ["1.0.0"], "lines": ["a1: rolled_back to 1.0.0"]}
    )
    assert done["mitigation"]["reason"] == "rolled back through rollback.yml to 1.0.0"
    assert done["status"] == "Monitoring"
    assert done["summary"][-1] == "mitigation: rolled back through rollback.yml to 1.0.0"
    assert sum(line.startswith("mitigation: ") for line in done["summary"]) == 1
    failed = fi.incident_outcome(report, {"ok": False, "lines": ["a2: rollback_failed"]})
    assert failed["mitigation"]["reason"].startswith("the rollback through rollback.yml failed")
    assert failed["status"] == "Identified"


# ----------------------------------------------------------------------- platform, report


def machine(ident: str, state: str) -> dict[str, Any]:
    return {"id": ident, "state": state, "region": "ams", "version": "3", "image": "i"}


def test_platform_serving_lines() -> None:
    vercel = fi.incident_platform_serving(
        {"current": {"id": "dpl_1", "version": "1.2.0", "state": "READY", "created": 0, "url": "u"},
         "previous": None},
        "vercel",
    )  # fmt: skip
    assert vercel == {
        "lines": ["production: dpl_1 (version 1.2.0, READY, created 1970-01-01T00:00:00Z, u)"],
        "error": None,
    }
    render = fi.incident_platform_serving(
        {
            "live": {"id": "dep-2", "status": "live", "source": "abc", "created": "t"},
            "previous_good": {
                "id": "dep-1",
                "status": "deactivated",
                "source": "d",
                "created": "s",
            },
        },
        "render",
    )
    assert render["lines"][0] == "live: dep-2 (live, abc, created t)"
    assert render["lines"][1].startswith("rollback would go to: dep-1")
    fly = fi.incident_platform_serving(
        {"machines": [machine("m1", "started"), machine("m2", "stopped")]},
        "fly",
    )
    assert fly["lines"][0] == "2 machine(s): 1 started, 1 stopped"
    failed = fi.incident_platform_serving({"failed": True, "msg": "401 Unauthorized"}, "render")
    assert failed == {"lines": [], "error": "401 Unauthorized"}


def test_a_platform_app_that_is_down_is_p0_and_gates() -> None:
    report = fi.incident_assess(
        {},
        database=DB_OK,
        ledger=ledger(entry(12)),
        platform={
            "target": "render",
            "unit": "render:srv-1",
            "base_url": "https://shop",
            "summary": down("/health check failed: connection refused"),
            "serving": {"lines": ["live: dep-2"], "error": None},
        },
        settings={"mitigate": "rollback", "window_minutes": 120},
        now=NOW,
    )
    assert report["severity"] == "P0"
    assert report["reasons"][0].startswith("the app on render (https://shop) is down")
    assert report["gate"]["failing"] == ["render:srv-1: /health check failed: connection refused"]
    assert report["mitigation"]["rollback"] is True


def test_the_markdown_report_has_every_section_and_fits_when_asked() -> None:
    apps = {
        "a1": {
            "summary": healthy(),
            "probe": probe([f"line {i} token=abc{i}" for i in range(400)]),
        },
        "a2": {"summary": down(), "probe": probe(["ok"])},
    }
    report = assess(apps, ledger_result=ledger(entry(180), entry(12)), mitigate="rollback",
                    operator="alice", reason="pager", started="2026-01-10T11:59:00Z")  # fmt: skip
    text = fi.incident_markdown(report)
    for heading in (
        "# Incident report: production - P1: a2 is down",
        "## Why this severity",
        "## Impact",
        "## Findings",
        "### App health",
        "### Database",
        "### Disk and memory",
        "## Timeline",
        "## Mitigation",
        "## Next steps",
        "## Communication update",
        "**Status:** Identified",
        "**Impact:** Partial outage: 1 of 2 app hosts down (a2)",
        "**Next update:**\nin 30 minutes (12:30 UTC)",
        "## Logs",
    ):
        assert heading in text, heading
    assert (
        "| 2026-01-10 11:48:00 | 12 min ago | deploy | 1.1.0 | succeeded | alice | release |"
        in text
    )
    assert "abc399" not in text and "token=********" in text
    assert len(text) > fi.REPORT_MAX_CHARS
    short = fi.incident_markdown(report, max_chars=fi.REPORT_MAX_CHARS)
    assert len(short) <= fi.REPORT_MAX_CHARS and "## Communication update" in short
    stats = fi.incident_stats(report, "/r/incident.md")
    assert stats["report_path"] == "/r/incident.md" and stats["report"] == short
    assert stats["summary"][-1] == "report: /r/incident.md"
    assert "probe" not in stats["apps"]["a1"] and stats["apps"]["a1"]["log_error_lines"] == 0
    assert stats["severity"] == "P1" and stats["verdict"] == "warn"
