"""filter_plugins/opsbook_filters.py: DSN redaction and the health_check verdict."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.loaders import load_module_utils, load_plugin

flt = load_plugin("filter_plugins", "opsbook_filters")
pg_utils = load_module_utils("opsbook_pg")

# ------------------------------------------------------------------------- dsn_redact

DSNS = [
    ("postgresql://app:secret@db:5432/app", "postgresql://app:********@db:5432/app"),
    ("postgres://u:p%40ss@db/app?sslmode=require", "postgres://u:********@db/app?sslmode=require"),
    ("postgresql://app@db/app", "postgresql://app@db/app"),
    ("postgresql://db:5432/app", "postgresql://db:5432/app"),
    ("postgresql://app@db/app?password=secret", "postgresql://app@db/app?password=********"),
    (
        "host=db user=app password=secret dbname=app",
        "host=db user=app password=******** dbname=app",
    ),
    ("host=db PASSWORD='se cret'", "host=db PASSWORD=********"),
    ("host=db dbname=app", "host=db dbname=app"),
]


@pytest.mark.parametrize(("dsn", "expected"), DSNS)
def test_dsn_redact(dsn: str, expected: str) -> None:
    assert flt.dsn_redact(dsn) == expected


@pytest.mark.parametrize(("dsn", "_expected"), DSNS)
def test_dsn_redact_agrees_with_module_utils(dsn: str, _expected: str) -> None:
    assert flt.dsn_redact(dsn) == pg_utils.redact_dsn(dsn)


def test_dsn_redact_none() -> None:
    assert flt.dsn_redact(None) == ""


def test_filters_are_registered() -> None:
    names = flt.FilterModule().filters()
    assert set(names) == {
        "dsn_database",
        "dsn_redact",
        "dsn_with_credentials",
        "opsbook_bytes",
        "opsbook_confirmation",
        "health_check_app_summary",
        "health_check_database_summary",
        "health_check_report",
    }


def test_worst_verdict() -> None:
    assert flt.worst_verdict() == "ok"
    assert flt.worst_verdict("ok", "warn") == "warn"
    assert flt.worst_verdict("warn", "fail", "ok") == "fail"
    assert flt.worst_verdict("bogus") == "ok"


# ------------------------------------------------------------------------- fixtures


def health(
    status: int | None = 200,
    latency: float | None = 23.4,
    problems: list[str] | None = None,
    url: str = "http://127.0.10.1:8000/health",
) -> dict[str, Any]:
    problems = problems or []
    return {
        "changed": False,
        "url": url,
        "status": status,
        "latency_ms": latency,
        "json": {"status": "ok"},
        "ok": not problems,
        "problems": problems,
        "attempts": 1,
    }


def version(
    value: str | None = "1.0.0",
    problems: list[str] | None = None,
    url: str = "http://127.0.10.1:8000/api/version",
) -> dict[str, Any]:
    problems = problems or []
    body = {"version": value} if value is not None else {}
    return {
        "changed": False,
        "url": url,
        "status": 200 if not problems else 404,
        "latency_ms": 5.0,
        "json": body,
        "ok": not problems,
        "problems": problems,
    }


def db(
    verdict: str = "ok",
    connected: bool = True,
    problems: list[str] | None = None,
    percent: float = 15.0,
) -> dict[str, Any]:
    result = {
        "changed": False,
        "connected": connected,
        "verdict": verdict,
        "ok": verdict != "fail",
        "problems": problems or [],
        "error": None,
        "attempts": 1,
    }
    if connected:
        result.update(
            server_version="15.8",
            connections_used=3,
            max_connections=20,
            connections_percent=percent,
            database_name="app",
            database_size_pretty="8192 kB",
            database_size_bytes=8388608,
        )
    else:
        result["error"] = "connection failed: refused"
    return result


# ------------------------------------------------------------------------- app summary


def test_app_summary_healthy() -> None:
    assert flt.health_check_app_summary(health(), version()) == {
        "status": 200,
        "latency_ms": 23.4,
        "version": "1.0.0",
        "ok": True,
        "problems": [],
        "url": "http://127.0.10.1:8000/health",
    }


def test_app_summary_names_the_endpoint_of_each_problem() -> None:
    summary = flt.health_check_app_summary(
        health(500, 812.0, ["status 500, expected 200", "latency 812 ms over threshold 500 ms"]),
        version(None, ["status 404, expected 200"]),
    )
    assert summary["ok"] is False and summary["version"] is None
    assert summary["problems"] == [
        "/health status 500, expected 200",
        "/health latency 812 ms over threshold 500 ms",
        "/api/version status 404, expected 200",
    ]


def test_app_summary_missing_failed_and_skipped_results() -> None:
    missing = flt.health_check_app_summary(None, None)
    assert missing["ok"] is False
    assert missing["problems"] == [
        "/health was not checked (the check did not run)",
        "/api/version was not checked (the check did not run)",
    ]
    failed = flt.health_check_app_summary(
        {"failed": True, "msg": "http_check: invalid input:\n url must be"}, {"skipped": True}
    )
    assert failed["problems"] == [
        "/health check failed: http_check: invalid input: url must be",
        "/api/version was not checked (skipped)",
    ]


def test_app_summary_custom_paths_and_a_result_failed_by_fail_on_problem() -> None:
    result = health(500, 3.0, ["status 500, expected 200"], url="http://h/healthz")
    result["failed"] = True
    summary = flt.health_check_app_summary(result, version(), health_path="/healthz")
    assert summary["problems"] == ["/healthz status 500, expected 200"]
    assert summary["status"] == 500


# ------------------------------------------------------------------------- database summary


def test_database_summary_ok_and_warn() -> None:
    summary = flt.health_check_database_summary(db())
    assert summary["verdict"] == "ok" and summary["ok"] is True and summary["skipped"] is False
    assert summary["connections_used"] == 3 and summary["server_version"] == "15.8"
    warn = flt.health_check_database_summary(db("warn", problems=["connections at 85%"]))
    assert warn["verdict"] == "warn" and warn["ok"] is True
    assert warn["problems"] == ["connections at 85%"]


def test_database_summary_unreachable_missing_failed_and_skipped() -> None:
    down = flt.health_check_database_summary(db("fail", False, ["cannot connect: refused"]))
    assert down["verdict"] == "fail" and down["connected"] is False
    assert down["error"] == "connection failed: refused"
    missing = flt.health_check_database_summary(None)
    assert missing["verdict"] == "fail"
    assert missing["problems"] == ["the database check did not run"]
    failed = flt.health_check_database_summary({"failed": True, "msg": "psycopg missing"})
    assert failed["problems"] == ["check failed: psycopg missing"]
    skipped = flt.health_check_database_summary({"skipped": True, "changed": False})
    assert skipped["skipped"] is True and skipped["verdict"] == "ok"
    assert skipped["reason"] == "database_url is not set"
    reason = flt.health_check_database_summary(None, skip_reason="group dbadmin has no host")
    assert reason["skipped"] is True and reason["reason"] == "group dbadmin has no host"


# ------------------------------------------------------------------------- report


def report(**kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "apps": {
            "app1": {"health": health(), "version": version()},
            "app2": {"health": health(latency=7.0), "version": version()},
        },
        "database": db(),
        "database_host": "localhost",
        "database_target": "postgresql://opsbook:pw@127.0.0.1:5432/app",
        "latency_threshold_ms": 500,
        "connections_warn_percent": 80,
    }
    args.update(kwargs)
    return flt.health_check_report(args.pop("apps"), **args)


def test_report_all_healthy() -> None:
    out = report()
    assert out["verdict"] == "ok"
    assert out["problems"] == [] and out["skipped"] == []
    assert set(out["apps"]) == {"app1", "app2"}
    assert out["database"]["target"] == "postgresql://opsbook:********@127.0.0.1:5432/app"
    assert out["database"]["host"] == "localhost"
    assert out["thresholds"] == {"latency_ms": 500, "connections_warn_percent": 80}
    lines = out["lines"]
    assert lines[0] == "Health check verdict: OK"
    assert lines[1] == (
        "Thresholds: /health within 500 ms, database connections warn at 80% of max_connections"
    )
    assert re.fullmatch(r"app1  /health  200  23 ms  version 1\.0\.0  OK", lines[2])
    assert re.fullmatch(r"app2  /health  200   7 ms  version 1\.0\.0  OK", lines[3])
    assert lines[4] == (
        "database  connected  PostgreSQL 15.8  connections 3/20 (15.0%)  size 8192 kB  OK"
    )
    assert lines[5] == (
        "database  target postgresql://opsbook:********@127.0.0.1:5432/app, checked from localhost"
    )
    assert "pw@" not in "\n".join(lines)


def test_report_failing_app_fails_and_names_host_and_problem() -> None:
    out = report(
        apps={
            "app1": {"health": health(), "version": version()},
            "app2": {
                "health": health(500, 12.0, ["status 500, expected 200"]),
                "version": version(),
            },
            "app3": {
                "health": health(200, 812.0, ["latency 812 ms over threshold 500 ms"]),
                "version": version(),
            },
        }
    )
    assert out["verdict"] == "fail"
    assert out["apps"]["app1"]["ok"] is True and out["apps"]["app2"]["ok"] is False
    assert out["problems"] == [
        "app2: /health status 500, expected 200",
        "app3: /health latency 812 ms over threshold 500 ms",
    ]
    assert out["lines"][3].endswith("FAIL: /health status 500, expected 200")
    assert out["lines"][4].startswith("app3  /health  200  812 ms")


def test_report_app_without_results_fails() -> None:
    out = report(apps={"app1": None})
    assert out["verdict"] == "fail"
    assert out["problems"][0] == "app1: /health was not checked (the check did not run)"
    assert re.fullmatch(r"app1  /health  -  -  version -  FAIL: .*", out["lines"][2])


def test_report_database_warn_and_fail() -> None:
    warn = report(database=db("warn", problems=["connections at 85.0% of max_connections"]))
    assert warn["verdict"] == "warn"
    assert warn["problems"] == ["database: connections at 85.0% of max_connections"]
    assert warn["lines"][4].endswith("WARN: connections at 85.0% of max_connections")
    down = report(database=db("fail", False, ["cannot connect: refused"]))
    assert down["verdict"] == "fail"
    assert down["database"]["connected"] is False
    assert down["lines"][4] == "database  NOT connected  FAIL: cannot connect: refused"


def test_report_fail_beats_warn() -> None:
    out = report(
        apps={
            "app1": {"health": health(500, 1.0, ["status 500, expected 200"]), "version": version()}
        },
        database=db("warn", problems=["connections high"]),
    )
    assert out["verdict"] == "fail"


def test_report_skipped_parts_are_not_errors() -> None:
    out = report(
        apps={},
        database=None,
        database_host=None,
        database_target=None,
        app_skip_reason="group app has no host",
        database_skip_reason="group dbadmin has no host",
    )
    assert out["verdict"] == "ok"
    assert out["apps"] == {}
    assert out["database"]["skipped"] is True
    assert out["skipped"] == ["apps: group app has no host", "database: group dbadmin has no host"]
    assert out["lines"][2:] == [
        "apps  SKIPPED: group app has no host",
        "database  SKIPPED: group dbadmin has no host",
    ]
    no_url = report(database={"skipped": True, "changed": False})
    assert no_url["verdict"] == "ok"
    assert no_url["skipped"] == ["database: database_url is not set"]


@pytest.mark.parametrize(
    ("dsn", "database"),
    [
        ("postgresql://u:p@h:5432/app", "app"),
        ("postgres://u@h/my%20db", "my db"),
        ("postgresql://u:p@h/app?dbname=other&sslmode=require", "other"),
        ("postgresql://alice:p@h", "alice"),
        ("postgresql://h/?user=bob", "bob"),
        ("host=h port=5432 dbname=app user=u password='p w'", "app"),
        ("host=h dbname='it\\'s' user=u", "it's"),
        ("host=h user=carol password=x", "carol"),
        ("", ""),
        (None, ""),
    ],
)
def test_dsn_database_reads_the_database_as_libpq_does(dsn: str | None, database: str) -> None:
    assert flt.dsn_database(dsn) == database
