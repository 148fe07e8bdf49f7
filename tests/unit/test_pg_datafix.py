"""library/pg_datafix.py: planning (the file's BEGIN/COMMIT, the verify section), refusals,
bounds, the report, the commit/rollback rule (no server needed)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import yaml

from tests.loaders import load_library, module_documentation

dfx = load_library("pg_datafix")

SECRET = "S3cr#t-pw_42"


# The splitting itself (quotes, comments, dollar quotes, BEGIN ATOMIC, the lines) is
# module_utils/opsbook_sql.py's, tested in tests/unit/test_sql.py.

# ----------------------------------------------------------------- planning and refusals

RUNBOOK_FIX = """-- Data Fix: Correct duplicate user emails (2025-10-01)
BEGIN;

DELETE FROM users
WHERE id NOT IN (SELECT MIN(id) FROM users GROUP BY email);

-- opsbook:verify
SELECT email, COUNT(*) FROM users GROUP BY email HAVING COUNT(*) > 1;
-- Should return 0 rows

COMMIT;
"""


def test_plan_replaces_the_files_begin_commit_and_takes_the_verify_section() -> None:
    plan = dfx.plan_fix(RUNBOOK_FIX, None, require_verify=True)
    assert [s.preview for s in plan.statements] == [
        "DELETE FROM users WHERE id NOT IN (SELECT MIN(id) FROM users GROUP BY email)"
    ]
    assert plan.statements[0].index == 1 and plan.statements[0].line == 4
    assert plan.verify_source == "file"
    assert (
        plan.verify_preview
        == "SELECT email, COUNT(*) FROM users GROUP BY email HAVING COUNT(*) > 1"
    )
    assert plan.transaction_modes is None
    assert plan.notes == [
        "the file's own BEGIN (line 2) and COMMIT (line 11) were replaced by the module's "
        "transaction"
    ]


def test_plan_keeps_the_transaction_modes_of_the_files_begin() -> None:
    plan = dfx.plan_fix(
        "BEGIN ISOLATION LEVEL SERIALIZABLE;\nUPDATE t SET a = 1;\nEND;",
        "SELECT 1 WHERE false",
        True,
    )
    assert plan.transaction_modes == "ISOLATION LEVEL SERIALIZABLE"
    assert plan.verify_source == "option" and len(plan.statements) == 1


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("UPDATE t SET a = 1;\nCOMMIT;\nUPDATE t SET a = 2;", "statement 2 (line 2) is COMMIT"),
        ("BEGIN;\nUPDATE t SET a = 1;\nROLLBACK;", "statement 1 (line 1) is BEGIN"),
        ("UPDATE t SET a = 1;\nROLLBACK;", "is ROLLBACK"),
        ("UPDATE t SET a = 1;\nPREPARE TRANSACTION 'x';", "is PREPARE TRANSACTION"),
        ("VACUUM t;", "is VACUUM, which cannot run inside a transaction"),
        ("CREATE UNIQUE INDEX CONCURRENTLY i ON t (a);", "is CREATE INDEX CONCURRENTLY"),
        ("DROP INDEX CONCURRENTLY i;", "is DROP INDEX CONCURRENTLY"),
        ("REINDEX (CONCURRENTLY) TABLE t;", "is REINDEX CONCURRENTLY"),
        ("CREATE DATABASE x;", "is CREATE DATABASE"),
        ("ALTER SYSTEM SET work_mem = '1GB';", "is ALTER SYSTEM"),
        ("-- only a comment\n", "the file holds no statement to run"),
        ("SELECT 'open", "cannot be read as SQL: line 1: unterminated quoted string"),
        ("SELECT 1;\n\\set x 1\n", "cannot be read as SQL: line 2: psql meta-command"),
        ("UPDATE t\n-- opsbook:verify\nSET a = 1;", "line 2: the -- opsbook:verify marker"),
        (
            "UPDATE t SET a = 1;\n-- opsbook:verify\nSELECT 1;\n-- opsbook:verify\nSELECT 2;",
            "line 4: a second -- opsbook:verify marker",
        ),
    ],
)
def test_plan_refuses_what_cannot_run_in_one_transaction(sql: str, fragment: str) -> None:
    with pytest.raises(dfx.FixRefused, match=re.escape(fragment)):
        dfx.plan_fix(sql, "SELECT 1 WHERE false", require_verify=True)


def test_a_begin_atomic_function_body_is_one_statement_of_the_fix() -> None:
    """The splitter pg_migrate uses (module_utils/opsbook_sql.py) reads a SQL-standard body as
    PostgreSQL does: a fix may create such a function (pg_datafix refused it before)."""
    plan = dfx.plan_fix(
        "BEGIN;\nCREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC SELECT 1; END;\n"
        "UPDATE t SET a = f();\nCOMMIT;",
        "SELECT 1 WHERE false",
        require_verify=True,
    )
    assert [(s.index, s.line, s.words[:2]) for s in plan.statements] == [
        (1, 2, ["CREATE", "FUNCTION"]),
        (2, 4, ["UPDATE", "T"]),
    ]
    assert plan.statements[0].text.endswith("BEGIN ATOMIC SELECT 1; END")


def test_savepoints_stay_inside_the_transaction() -> None:
    plan = dfx.plan_fix(
        "SAVEPOINT a;\nUPDATE t SET x = 1;\nROLLBACK TO SAVEPOINT a;\nRELEASE a;", None, False
    )
    assert len(plan.statements) == 4


@pytest.mark.parametrize(
    ("sql", "verify", "require", "fragment"),
    [
        ("UPDATE t SET a = 1;", None, True, "no verify query"),
        ("UPDATE t SET a = 1;", "  ", True, "no verify query"),
        ("UPDATE t SET a = 1;", "SELECT 1; SELECT 2", True, "verify must be exactly one query"),
        (
            "UPDATE t SET a = 1;\n-- opsbook:verify\nSELECT 1;",
            "SELECT 2",
            False,
            "the verify query is given twice",
        ),
        (
            "UPDATE t SET a = 1;\n-- opsbook:verify\nSELECT 1;\nSELECT 2;",
            None,
            False,
            "must hold exactly one query, it holds 2",
        ),
        (
            "UPDATE t\n-- opsbook:verify\nSET a = 1;",
            None,
            False,
            "must come between statements",
        ),
    ],
)
def test_verify_query_rules(sql: str, verify: str | None, require: bool, fragment: str) -> None:
    with pytest.raises(dfx.FixRefused, match=re.escape(fragment)):
        dfx.plan_fix(sql, verify, require_verify=require)


def test_no_verify_query_is_allowed_when_not_required() -> None:
    plan = dfx.plan_fix("UPDATE t SET a = 1;", None, require_verify=False)
    assert plan.verify is None and plan.verify_source is None


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("data-fix-2025-10-01-user-emails.sql", True),
        ("data-fix-2024-02-29-leap_day.v2.sql", True),
        ("data-fix-2025-13-01-bad-month.sql", False),
        ("data-fix-2025-02-30-no-such-day.sql", False),
        ("fix-user-emails.sql", False),
        ("data-fix-2025-10-01.sql", False),
        ("data-fix-2025-10-01-user-emails.SQL", False),
        ("<content>", False),
    ],
)
def test_check_name(name: str, ok: bool) -> None:
    warning = dfx.check_name(name)
    assert (warning is None) is ok
    if not ok:
        assert name in warning


# ----------------------------------------------------------------- tags and bounds


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("INSERT 0 5", ("INSERT", 5)),
        ("UPDATE 3", ("UPDATE", 3)),
        ("DELETE 0", ("DELETE", 0)),
        ("MERGE 7", ("MERGE", 7)),
        ("SELECT 12", ("SELECT", 12)),
        ("SET", ("SET", None)),
        ("CREATE TABLE", ("CREATE TABLE", None)),
        ("DO", ("DO", None)),
        ("", ("", None)),
        (None, ("", None)),
    ],
)
def test_parse_command_tag(tag: str | None, expected: tuple[str, int | None]) -> None:
    assert dfx.parse_command_tag(tag) == expected


def test_only_dml_tags_are_counted() -> None:
    assert all(dfx.is_counted(c) for c in ("INSERT", "UPDATE", "DELETE", "MERGE", "COPY"))
    assert not any(dfx.is_counted(c) for c in ("SELECT", "DO", "CREATE TABLE", "SET"))


def test_statement_bound_problem() -> None:
    assert dfx.statement_bound_problem(5, None, None) is None
    assert dfx.statement_bound_problem(5, 1, 5) is None
    assert dfx.statement_bound_problem(6, 1, 5) == (
        "max_rows_per_statement",
        "affected 6 rows, more than max_rows_per_statement 5",
    )
    assert dfx.statement_bound_problem(0, 1, None) == (
        "min_rows_per_statement",
        "affected 0 rows, fewer than min_rows_per_statement 1",
    )


def test_jsonable_truncates_and_stringifies() -> None:
    assert dfx.jsonable(None) is None and dfx.jsonable(3) == 3 and dfx.jsonable(True) is True
    assert dfx.jsonable(b"\x01\xff") == "\\x01ff"
    long = dfx.jsonable("x" * 500)
    assert len(long) == dfx.VALUE_CHARS and long.endswith("\u2026")


# ----------------------------------------------------------------- the commit / rollback rule


# What a verify query "VERIFY ..." answers: 7 offending rows holding the types a real query
# returns. The module limits them (verify_show_rows), counts them (rowcount, not what it
# fetched), and turns each value into JSON text - the tests check that work, not the rows back.
VERIFY_COLUMNS = ["id", "email", "note", "raw", "amount", "seen_at"]
VERIFY_ROWS = [
    (n, f"u{n}@example.com", "x" * 300 if n == 1 else None, b"\x00\xff", Decimal("1.50"),
     datetime(2025, 10, 1, 12, n, tzinfo=UTC))
    for n in range(1, 8)
]  # fmt: skip
# How the report shows row n: the long note cut to VALUE_CHARS with an ellipsis, bytes as
# PostgreSQL's hex text, Decimal and datetime as their text.
LONG_NOTE = "x" * 199 + "\u2026"


def shown(n: int) -> list[Any]:
    return [n, f"u{n}@example.com", LONG_NOTE if n == 1 else None, "\\x00ff", "1.50",
            f"2025-10-01 12:0{n}:00+00:00"]  # fmt: skip


def shown_text(n: int) -> str:
    note = LONG_NOTE if n == 1 else "None"
    return (
        f"(id={n}, email=u{n}@example.com, note={note}, raw=\\x00ff, amount=1.50, "
        f"seen_at=2025-10-01 12:0{n}:00+00:00)"
    )


class FakeCursor:
    """Runs nothing; answers each statement with a canned command tag (and the catalog queries
    and "VERIFY ..." with canned rows)."""

    def __init__(self, tags: dict[str, str], fail_on: str | None = None) -> None:
        self.tags = tags
        self.fail_on = fail_on
        self.executed: list[str] = []
        self.statusmessage: str | None = None
        self.rowcount = -1
        self.description: Any = None
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, query: Any, params: Any = None) -> None:
        text = query if isinstance(query, str) else "SET LOCAL ..."
        self.executed.append(text)
        if self.fail_on and self.fail_on in text:
            raise RuntimeError(f"boom (postgresql://app:{SECRET}@db/app)")
        self.statusmessage = next((t for k, t in self.tags.items() if k in text), "SELECT 0")
        self._rows = []
        self.description = None
        if "current_database" in text:
            self._rows, self.description = [("app",)], [Col("current_database")]
        elif "pg_stat_xact_user_tables" in text:
            self._rows = [("audit", "t_log", 2, 0, 0), ("public", "t", 0, 2, 0)]
            self.description = [Col(c) for c in ("schemaname", "relname", "ins", "upd", "del")]
        elif text.startswith("SELECT 1 WHERE false"):
            self.description = [Col("?column?")]
        elif text.startswith("VERIFY"):
            self._rows = list(VERIFY_ROWS)
            self.description = [Col(c) for c in VERIFY_COLUMNS]
        self.rowcount = len(self._rows)

    def fetchone(self) -> tuple[Any, ...]:
        return self._rows[0]

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._rows)

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        self.fetched = size
        return self._rows[:size]


class Col:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeConn:
    def __init__(self, cursor: FakeCursor) -> None:
        self._cursor = cursor
        self.commits = 0
        self.rollbacks = 0

    def cursor(self) -> FakeCursor:
        return self._cursor

    def commit(self) -> None:
        self.commits += 1

    def rollback(self) -> None:
        self.rollbacks += 1


def make_run(sql: str, verify: str | None = None, check_mode: bool = False, **params: Any) -> Any:
    values = {k: v.get("default") for k, v in dfx.argument_spec().items()}
    values.update(params)
    plan = dfx.plan_fix(sql, verify, require_verify=False)
    return dfx.FixRun("data-fix-2025-10-01-x.sql", "ab" * 32, 10, None, plan, values, check_mode)


TAGS = {"UPDATE": "UPDATE 2", "DELETE": "DELETE 3"}


def test_all_checks_pass_commits_once() -> None:
    conn = FakeConn(FakeCursor(TAGS))
    run = make_run("UPDATE t SET a = 1; DELETE FROM t WHERE b;")
    dfx.execute_fix(conn, run, "dsn")
    assert (conn.commits, conn.rollbacks) == (1, 0)
    result = run.result()
    assert result["outcome"] == "committed" and result["changed"] is True
    assert result["rows_affected"] == 5 and result["failed_checks"] == []  # UPDATE 2 + DELETE 3
    assert result["tables_changed"] == [
        {"table": "audit.t_log", "inserted": 2, "updated": 0, "deleted": 0},
        {"table": "public.t", "inserted": 0, "updated": 2, "deleted": 0},
    ]
    assert (
        "Tables changed in the transaction: audit.t_log (inserted 2, updated 0, deleted 0); "
        "public.t (inserted 0, updated 2, deleted 0)"
    ) in result["report_lines"]
    assert "Verify: no verify query" in result["report_lines"]


def test_check_mode_always_rolls_back_and_reports_what_would_happen() -> None:
    conn = FakeConn(FakeCursor(TAGS))
    run = make_run("UPDATE t SET a = 1;", check_mode=True)
    dfx.execute_fix(conn, run, "dsn")
    assert (conn.commits, conn.rollbacks) == (0, 1)
    result = run.result()
    assert result["outcome"] == "rolled_back" and result["would_commit"] is True
    assert result["changed"] is True and result["reason"] is None
    assert result["report_lines"][0].endswith(
        "CHECK MODE - would commit (2 rows affected), rolled back"
    )


def test_a_failing_verify_rolls_back_and_shows_the_first_rows_as_json() -> None:
    conn = FakeConn(FakeCursor(TAGS))
    run = make_run("UPDATE t SET a = 1;", verify="VERIFY the emails")
    dfx.execute_fix(conn, run, "dsn")
    assert (conn.commits, conn.rollbacks) == (0, 1)
    result = run.result()
    assert result["failed_check"] == "verify" and result["changed"] is False
    verify = result["verify"]
    assert (verify["ran"], verify["passed"], verify["row_count"]) == (True, False, 7)
    assert conn._cursor.fetched == 5  # verify_show_rows: the other 2 rows are never fetched
    assert verify["rows"] == [shown(n) for n in range(1, 6)]
    assert result["reason"] == (
        "the verify query returned 7 rows, it must return none; first: "
        + ", ".join(shown_text(n) for n in range(1, 6))
    )
    executed = conn._cursor.executed
    assert (
        executed.index("SET LOCAL transaction_read_only = on")
        == executed.index("VERIFY the emails") - 1
    )  # the verify query runs read-only


def test_verify_show_rows_zero_counts_the_rows_and_shows_none() -> None:
    cursor = FakeCursor(TAGS)
    run = make_run("UPDATE t SET a = 1;", verify="VERIFY the emails", verify_show_rows=0)
    dfx.execute_fix(FakeConn(cursor), run, "dsn")
    result = run.result()
    assert (result["verify"]["row_count"], result["verify"]["rows"]) == (7, [])
    assert not hasattr(cursor, "fetched")
    assert result["reason"] == "the verify query returned 7 rows, it must return none"


def test_bounds_stop_the_fix_at_the_offending_statement() -> None:
    cursor = FakeCursor(TAGS)
    run = make_run("UPDATE t SET a = 1; DELETE FROM t WHERE b; UPDATE t SET c = 2;", max_rows=4)
    dfx.execute_fix(FakeConn(cursor), run, "dsn")
    result = run.result()
    assert result["failed_check"] == "max_rows"
    assert [s["index"] for s in result["statements"]] == [1, 2]  # the third never ran
    assert (
        "after statement 2 (line 1) the fix had affected 5 rows, more than max_rows 4"
        in result["reason"]
    )
    assert result["verify"]["ran"] is False


def test_min_rows_and_per_statement_bounds() -> None:
    run = make_run("UPDATE t SET a = 1;", min_rows=3)
    dfx.execute_fix(FakeConn(FakeCursor(TAGS)), run, "dsn")
    assert run.result()["failed_checks"] == ["min_rows"]
    run = make_run("UPDATE t SET a = 1;", min_rows_per_statement=3)
    dfx.execute_fix(FakeConn(FakeCursor(TAGS)), run, "dsn")
    assert run.result()["failed_checks"] == ["min_rows_per_statement"]


def test_a_statement_error_rolls_back_without_the_password() -> None:
    conn = FakeConn(FakeCursor(TAGS, fail_on="DELETE"))
    run = make_run("UPDATE t SET a = 1; DELETE FROM t;")
    dfx.execute_fix(conn, run, f"postgresql://app:{SECRET}@db/app")
    result = run.result()
    assert (conn.commits, conn.rollbacks) == (0, 1)
    assert result["failed_check"] == "statement_error"
    assert SECRET not in repr(result)
    assert result["statements"][1]["error"].startswith("boom")


class Explodes(FakeCursor):
    def execute(self, query: Any, params: Any = None) -> None:
        super().execute(query, params)
        if isinstance(query, str) and query.startswith("UPDATE"):
            self.statusmessage = object()  # makes the tag parser blow up


def test_an_unexpected_error_never_commits() -> None:
    conn = FakeConn(Explodes(TAGS))
    run = make_run("UPDATE t SET a = 1;")
    with pytest.raises(AttributeError):
        dfx.execute_fix(conn, run, "dsn")
    assert (conn.commits, conn.rollbacks) == (0, 1)
    assert run.outcome == "rolled_back" and run.committed is False


def test_a_failing_commit_is_a_rollback() -> None:
    class BadCommit(FakeConn):
        def commit(self) -> None:
            raise RuntimeError("could not serialize access")

    conn = BadCommit(FakeCursor(TAGS))
    run = make_run("UPDATE t SET a = 1;")
    dfx.execute_fix(conn, run, "dsn")
    result = run.result()
    assert result["failed_check"] == "commit" and result["outcome"] == "rolled_back"
    assert conn.rollbacks == 1


# ----------------------------------------------------------------- the report


def test_report_lines_of_a_verify_failure() -> None:
    run = make_run("BEGIN;\nUPDATE t SET a = 1;\nCOMMIT;", verify="VERIFY x", max_rows=10)
    dfx.execute_fix(FakeConn(FakeCursor(TAGS)), run, "dsn")
    lines = run.result()["report_lines"]
    assert lines[0] == (
        "Data fix data-fix-2025-10-01-x.sql (sha256 abababababab, 10 bytes) on database app: "
        "ROLLED BACK - nothing was changed (failed: verify)"
    )
    assert lines[1].startswith("Note: the file's own BEGIN (line 1) and COMMIT (line 3)")
    assert lines[2] == "    1  line 2     UPDATE 2         UPDATE t SET a = 1"
    assert "Rows affected: 2 (bounds: max 10 total)" in lines
    assert "Tables changed in the transaction: audit.t_log" in lines[4]
    verify_at = lines.index("Verify (option): 7 rows - FAILED (it must return none)")
    assert lines[verify_at + 1 : verify_at + 6] == ["  " + shown_text(n) for n in range(1, 6)]
    assert lines[verify_at + 6].startswith("Failed: the verify query returned 7 rows")
    assert lines[verify_at + 6 :] == [lines[-1]]
    assert run.result()["msg"].startswith("data fix data-fix-2025-10-01-x.sql ROLLED BACK")


def test_summary_of_a_commit_and_of_a_refusal() -> None:
    run = make_run("UPDATE t SET a = 1;", verify="SELECT 1 WHERE false")
    dfx.execute_fix(FakeConn(FakeCursor(TAGS)), run, "dsn")
    assert run.result()["msg"] == (
        "data fix data-fix-2025-10-01-x.sql committed: 2 rows affected, verify passed"
    )
    refused = dfx.FixRun("x.sql", "00" * 32, 1, "bad name", None, {}, False)
    refused.outcome = "refused"
    refused.fail("refused", "statement 1 (line 1) is VACUUM")
    result = refused.result()
    assert (
        result["msg"] == "data fix x.sql refused, nothing was run: statement 1 (line 1) is VACUUM"
    )
    assert result["changed"] is False and result["would_commit"] is False


# ----------------------------------------------------------------- inputs and docs


def params(**overrides: Any) -> dict[str, Any]:
    values = {k: v.get("default") for k, v in dfx.argument_spec().items()}
    values["dsn"] = "host=db"
    values.update(overrides)
    return values


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"max_rows": -1}, "max_rows must be >= 0"),
        ({"min_rows": 5, "max_rows": 2}, "min_rows (5) is greater than max_rows (2)"),
        (
            {"min_rows_per_statement": 3, "max_rows_per_statement": 1},
            "min_rows_per_statement (3) is greater than max_rows_per_statement (1)",
        ),
        ({"verify_show_rows": -1}, "verify_show_rows must be >= 0"),
        ({"lock_timeout": " "}, "lock_timeout must not be empty"),
        ({"dsn": ""}, "dsn must not be empty"),
    ],
)
def test_validate_params(overrides: dict[str, Any], fragment: str) -> None:
    assert any(fragment in e for e in dfx.validate_params(params(**overrides)))
    assert dfx.validate_params(params()) == []


def test_documentation_matches_the_argument_spec() -> None:
    doc = module_documentation(dfx)
    assert set(doc["options"]) == set(dfx.argument_spec())
    assert doc["attributes"]["check_mode"]["support"] == "full"
    returned = yaml.safe_load(dfx.RETURN)
    for key in ("outcome", "committed", "failed_check", "statements", "verify", "report_lines"):
        assert key in returned, key
    yaml.safe_load(dfx.EXAMPLES)


def test_report_of_a_fix_that_could_not_connect() -> None:
    plan = dfx.plan_fix("UPDATE t SET a = 1;", "SELECT 1 WHERE false", require_verify=True)
    run = dfx.FixRun("data-fix-2025-10-01-x.sql", "cd" * 32, 20, None, plan, {}, False)
    run.outcome = "not_run"
    run.fail("connect", "cannot connect: connection refused")
    result = run.result()
    assert result["msg"] == (
        "data fix data-fix-2025-10-01-x.sql not run, nothing was changed: "
        "cannot connect: connection refused"
    )
    assert result["report_lines"][0].endswith("on database ?: NOT RUN - nothing was changed")
    assert not any(line.startswith("Rows affected") for line in result["report_lines"])
    assert result["changed"] is False and result["would_commit"] is False
