"""library/pg_health.py and module_utils/opsbook_pg.py: pure parts, connection errors
(no server needed), and an ad hoc module run that must not leak the password."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import ansible_env, run_ansible
from tests.loaders import load_library, load_module_utils, module_documentation

opsbook_pg = load_module_utils("opsbook_pg")
pgh = load_library("pg_health")

SECRET = "S3cr#t-pw_42"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def params(**overrides: Any) -> dict[str, Any]:
    values = {k: v.get("default") for k, v in pgh.argument_spec().items()}
    values["dsn"] = f"postgresql://app:{SECRET}@127.0.0.1:{closed_port()}/app"
    values.update(overrides)
    return values


# ----------------------------------------------------------------- module_utils: DSN secrets

REDACTIONS = [
    ("postgresql://app:secret@db:5432/app", "postgresql://app:********@db:5432/app"),
    (
        "postgres://app:secret@db/app?sslmode=require",
        "postgres://app:********@db/app?sslmode=require",
    ),
    ("postgresql://:secret@db/app", "postgresql://:********@db/app"),
    ("postgresql://app@db/app", "postgresql://app@db/app"),
    ("postgresql://db:5432/app", "postgresql://db:5432/app"),
    (
        "postgresql://app@db/app?password=secret&sslmode=require",
        "postgresql://app@db/app?password=********&sslmode=require",
    ),
    (
        "host=db dbname=app user=app password=secret",
        "host=db dbname=app user=app password=********",
    ),
    ("host=db password = secret user=app", "host=db password = ******** user=app"),
    ("host=db password='se cret' user=app", "host=db password=******** user=app"),
    ("password=secret host=db", "password=******** host=db"),
    ("host=db dbname=app", "host=db dbname=app"),
    ("", ""),
]


@pytest.mark.parametrize(("dsn", "expected"), REDACTIONS)
def test_redact_dsn(dsn: str, expected: str) -> None:
    assert opsbook_pg.redact_dsn(dsn) == expected


def test_dsn_passwords_finds_written_and_decoded_forms() -> None:
    assert opsbook_pg.dsn_passwords("postgresql://u:p%40ss@h/db") == ["p%40ss", "p@ss"]
    assert "se cret" in opsbook_pg.dsn_passwords("host=h password='se cret'")
    assert opsbook_pg.dsn_passwords("host=h user=u") == []


def test_scrub_secrets_longest_first() -> None:
    assert opsbook_pg.scrub_secrets("a abc ab", ["ab", "abc"]) == "a ******** ********"
    assert opsbook_pg.scrub_secrets("nothing", []) == "nothing"


def test_safe_error_never_contains_the_password() -> None:
    dsn = f"postgresql://app:{SECRET}@db/app"
    exc = RuntimeError(f'invalid dsn: missing "=" after "{dsn}"\n\tdetail {SECRET} here')
    text = opsbook_pg.safe_error(exc, dsn)
    assert SECRET not in text
    assert "\n" not in text and "; detail" in text


def test_connection_argument_spec_is_shared_and_secret() -> None:
    spec = opsbook_pg.pg_connection_argument_spec()
    assert spec == {
        "dsn": {"type": "str", "required": True, "no_log": True},
        "connect_timeout": {"type": "int", "default": 10},
        "application_name": {"type": "str", "default": "opsbook"},
    }
    module_spec = pgh.argument_spec()
    for key, value in spec.items():
        assert module_spec[key] == value


def test_validate_connection_params() -> None:
    assert opsbook_pg.validate_connection_params({"dsn": "host=h", "connect_timeout": 5}) == []
    errors = opsbook_pg.validate_connection_params({"dsn": " ", "connect_timeout": 0})
    assert errors == ["dsn must not be empty", "connect_timeout must be >= 1 second, got 0"]


def test_connect_refused_raises_a_password_free_error() -> None:
    dsn = f"postgresql://app:{SECRET}@127.0.0.1:{closed_port()}/app"
    with pytest.raises(opsbook_pg.PgConnectError) as info:
        opsbook_pg.connect(dsn, connect_timeout=2)
    assert "Connection refused" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:{SECRET}@127.0.0.1:notaport/app",
        f"host=127.0.0.1 passwrd={SECRET}",
        f"postgresql://app:{SECRET}@127.0.0.1:1/app?sslmode=bogus",
        f"host=127.0.0.1 password={SECRET} dbname",
    ],
)
def test_connect_malformed_dsn_error_is_password_free(dsn: str) -> None:
    with pytest.raises(opsbook_pg.PgConnectError) as info:
        opsbook_pg.connect(dsn, connect_timeout=2)
    assert SECRET not in str(info.value)


def test_connect_with_retries_counts_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    sleeps: list[float] = []

    def failing(dsn: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(dsn)
        if len(calls) < 3:
            raise opsbook_pg.PgConnectError("down")
        return "conn"

    monkeypatch.setattr(opsbook_pg, "connect", failing)
    assert opsbook_pg.connect_with_retries(
        "d", retries=5, retry_delay_s=0.5, sleep=sleeps.append
    ) == ("conn", 3)
    assert sleeps == [0.5, 0.5]
    calls.clear()
    with pytest.raises(opsbook_pg.PgConnectError):
        opsbook_pg.connect_with_retries("d", retries=1, sleep=sleeps.append)
    assert len(calls) == 2


def test_close_quietly_rolls_back_and_closes_and_never_raises() -> None:
    class Conn:
        closed = False
        autocommit = False

        def __init__(self) -> None:
            self.events: list[str] = []

        def rollback(self) -> None:
            self.events.append("rollback")
            raise RuntimeError("broken")

        def close(self) -> None:
            self.events.append("close")

    conn = Conn()
    opsbook_pg.close_quietly(conn)
    assert conn.events == ["rollback", "close"]
    opsbook_pg.close_quietly(None)


# ----------------------------------------------------------------- pg_health: pure parts


def test_percent_and_short_version() -> None:
    assert pgh.percent(17, 20) == 85.0
    assert pgh.percent(1, 3) == 33.3
    assert pgh.percent(5, 0) == 0.0
    assert pgh.short_version("15.8 (Debian 15.8-1.pgdg120+1)") == "15.8"
    assert pgh.short_version("16.2") == "16.2"


def test_connections_outcome_below_threshold() -> None:
    outcome = pgh.connections_outcome(3, 0, 20, 3, None, 80)
    assert outcome.facts == {
        "connections_used": 3,
        "connections_hidden": 0,
        "max_connections": 20,
        "superuser_reserved_connections": 3,
        "reserved_connections": None,
        "connections_available": 14,
        "connections_percent": 15.0,
        "connections_warn": False,
    }
    assert outcome.warnings == [] and outcome.failures == []


def test_connections_outcome_warns_at_the_threshold_and_counts_hidden_rows() -> None:
    outcome = pgh.connections_outcome(14, 2, 20, 3, 2, 80)
    assert outcome.facts["connections_used"] == 16
    assert outcome.facts["connections_percent"] == 80.0
    assert outcome.facts["connections_warn"] is True
    assert outcome.facts["connections_available"] == 0
    assert outcome.warnings == ["connections at 80.0% of max_connections (16 of 20), warn at 80%"]
    assert pgh.connections_outcome(15, 0, 20, 3, None, 80).facts["connections_warn"] is False


def test_verdict_of() -> None:
    assert pgh.verdict_of([], []) == "ok"
    assert pgh.verdict_of([], ["w"]) == "warn"
    assert pgh.verdict_of(["f"], ["w"]) == "fail"


def test_connect_problem_drops_psycopg_prefix() -> None:
    assert pgh.connect_problem("connection failed: refused") == "cannot connect: refused"
    assert pgh.connect_problem("invalid dsn") == "cannot connect: invalid dsn"


def test_build_result_connected_with_warning() -> None:
    facts = {
        "server_version": "15.8",
        "connections_used": 17,
        "max_connections": 20,
        "connections_percent": 85.0,
        "database_size_pretty": "8 MB",
    }
    result = pgh.build_result(True, 1, ["connections"], facts, [], ["too many"])
    assert result["verdict"] == "warn" and result["ok"] is True
    assert result["problems"] == ["too many"]
    assert result["changed"] is False and result["error"] is None
    assert result["msg"] == (
        "connected to PostgreSQL 15.8, connections 17/20 (85.0%), size 8 MB: too many"
    )


def test_build_result_not_connected() -> None:
    result = pgh.build_result(
        False,
        3,
        ["version"],
        {},
        ["cannot connect: refused"],
        [],
        error="connection failed: refused",
    )
    assert result["connected"] is False and result["verdict"] == "fail" and result["ok"] is False
    assert result["attempts"] == 3
    assert result["msg"] == "cannot connect: connection failed: refused"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"connections_warn_percent": 0}, "connections_warn_percent must be > 0 and <= 100"),
        ({"connections_warn_percent": 101}, "connections_warn_percent must be"),
        ({"checks": []}, "checks must name at least one check"),
        ({"retries": -1}, "retries must be >= 0"),
        ({"retry_delay_s": -1}, "retry_delay_s must be >= 0"),
        ({"connect_timeout": 0}, "connect_timeout must be >= 1"),
        ({"dsn": ""}, "dsn must not be empty"),
    ],
)
def test_validate_params(overrides: dict[str, Any], fragment: str) -> None:
    assert any(fragment in e for e in pgh.validate_params(params(**overrides)))
    assert pgh.validate_params(params()) == []


# ----------------------------------------------------------------- pg_health: checks


class FakeCursor:
    def __init__(self, rows: dict[str, tuple[Any, ...]], fail_on: str | None = None) -> None:
        self.rows = rows
        self.fail_on = fail_on
        self.sql = ""

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def execute(self, sql: str) -> None:
        if self.fail_on and self.fail_on in sql:
            raise RuntimeError(f"permission denied (dsn postgresql://app:{SECRET}@h/app)")
        self.sql = sql

    def fetchone(self) -> tuple[Any, ...]:
        for key, row in self.rows.items():
            if key in self.sql:
                return row
        raise AssertionError(self.sql)


class FakeConn:
    def __init__(self, cursor: FakeCursor) -> None:
        self._cursor = cursor
        self.rollbacks = 0

    def cursor(self) -> FakeCursor:
        return self._cursor

    def rollback(self) -> None:
        self.rollbacks += 1


ROWS = {
    "server_version_num": ("15.8 (Debian)", 150008, "PostgreSQL 15.8 on x86_64"),
    "pg_stat_activity": (16, 1, 20, 3, ""),
    "pg_size_pretty": ("app", 8_388_608, "8192 kB"),
}


def test_run_checks_collects_facts_and_rolls_back_after_each_check() -> None:
    conn = FakeConn(FakeCursor(ROWS))
    facts, failures, warnings = pgh.run_checks(conn, params())
    assert failures == []
    assert warnings == ["connections at 85.0% of max_connections (17 of 20), warn at 80%"]
    assert facts["server_version"] == "15.8" and facts["server_version_num"] == 150008
    assert facts["connections_used"] == 17 and facts["connections_hidden"] == 1
    assert facts["reserved_connections"] is None
    assert facts["database_name"] == "app" and facts["database_size_bytes"] == 8_388_608
    assert conn.rollbacks == 3


def test_run_checks_turns_a_failing_check_into_a_password_free_failure() -> None:
    conn = FakeConn(FakeCursor(ROWS, fail_on="pg_size_pretty"))
    p = params(checks=["size", "version"])
    p["dsn"] = f"postgresql://app:{SECRET}@h/app"
    facts, failures, _ = pgh.run_checks(conn, p)
    assert len(failures) == 1 and failures[0].startswith("check size failed: permission denied")
    assert SECRET not in failures[0]
    assert facts["server_version"] == "15.8"


def test_checks_are_documented_and_extensible() -> None:
    doc = module_documentation(pgh)
    assert (
        sorted(doc["options"]["checks"]["choices"])
        == sorted(pgh.CHECKS)
        == sorted(pgh.argument_spec()["checks"]["choices"])
    )
    assert doc["options"]["checks"]["default"] == pgh.DEFAULT_CHECKS
    assert set(doc["options"]) == set(pgh.argument_spec())
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert doc["attributes"]["diff_mode"]["support"] == "none"
    returned = yaml.safe_load(pgh.RETURN)
    for key in (
        "connected",
        "server_version",
        "server_version_num",
        "connections_used",
        "max_connections",
        "superuser_reserved_connections",
        "connections_percent",
        "database_size_bytes",
        "verdict",
        "ok",
        "problems",
    ):
        assert key in returned, key


# ----------------------------------------------------------------- as a module


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run an Ansible tool (argv[0]) from the project root, the operation log discarded."""
    return run_ansible(argv[1:], env=ansible_env(oplog=Path(os.devnull)), timeout=120, tool=argv[0])


def test_module_unreachable_database_is_a_result_and_never_shows_the_password() -> None:
    dsn = f"postgresql://app:{SECRET}@127.0.0.1:{closed_port()}/app"
    proc = run_tool(
        "ansible",
        "localhost",
        "-vvv",
        "-m",
        "opsbook.runbooks.pg_health",
        "--check",
        "-a",
        f"dsn={dsn} connect_timeout=2 retries=1 retry_delay_s=0.1",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert SECRET not in output
    assert '"connected": false' in output and '"verdict": "fail"' in output
    assert '"attempts": 2' in output
    assert "Connection refused" in output


def test_module_fail_on_problem_fails_without_the_password() -> None:
    dsn = f"host=127.0.0.1 port={closed_port()} user=app password={SECRET} dbname=app"
    proc = run_tool(
        "ansible",
        "localhost",
        "-m",
        "opsbook.runbooks.pg_health",
        "-a",
        f"dsn='{dsn}' fail_on_problem=true connect_timeout=2",
    )
    assert proc.returncode != 0
    # An ad hoc failure echoes the command line's own arguments (the "Origin" of the
    # error, on stderr); the module's result itself must not hold the password.
    result = proc.stdout.split("=>", 1)[1]
    assert SECRET not in result
    assert "pg_health: cannot connect" in result and "(nothing was changed)" in result


def test_module_rejects_bad_input() -> None:
    proc = run_tool(
        "ansible",
        "localhost",
        "-m",
        "opsbook.runbooks.pg_health",
        "-a",
        "dsn=host=x connections_warn_percent=150",
    )
    assert proc.returncode != 0
    assert "pg_health: invalid input: connections_warn_percent must be > 0 and <= 100" in (
        proc.stdout
    )
