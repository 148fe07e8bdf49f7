"""pg_migrate against the lab's real PostgreSQL, each test in a fresh database of its own
(never database `app`): both layouts applied in order and idempotently, drift, a failing
migration that blocks until resolved, two runs at once under the advisory lock, check mode
leaving the schema unchanged, down to a target, non-transactional CREATE INDEX CONCURRENTLY,
_prisma_migrations exactly as Prisma writes it, and playbooks/db_migrate.yml end to end.

The module runs in a child process of its own (as Ansible runs it): ``python -c RUNNER`` with
its arguments on stdin, its JSON result on stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opsbook.lab import PostgresCluster, load_app_schema
from tests.harness import PROJECT_ROOT, VENV_BIN
from tests.integration.stats_helper import run_with_stats

pytestmark = pytest.mark.integration

EXAMPLES = PROJECT_ROOT / "examples" / "migrations"

RUNNER = """
import json, sys
from ansible.module_utils import basic
from tests.loaders import load_library
basic._ANSIBLE_ARGS = json.dumps({"ANSIBLE_MODULE_ARGS": json.loads(sys.stdin.read())}).encode()
basic._ANSIBLE_PROFILE = "legacy"
load_library("pg_migrate").main()
"""

# prisma-engines: sql-schema-connector/src/flavour/postgres.rs, create_migrations_table
PRISMA_ENGINE_DDL = """
CREATE TABLE _prisma_migrations (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
);
"""


# ------------------------------------------------------------------ helpers


def module_args(dsn: str, directory: Path | str, **params: Any) -> dict[str, Any]:
    return {"dsn": dsn, "migrations_dir": str(directory), **params}


def start_module(args: dict[str, Any], check: bool = False) -> subprocess.Popen[str]:
    payload = dict(args, _ansible_check_mode=check)
    proc = subprocess.Popen(
        [str(VENV_BIN / "python"), "-c", RUNNER],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(payload))
    proc.stdin.close()
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read()
    err = proc.stderr.read()
    proc.wait(timeout=timeout)
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"module output is not JSON: {out!r} {err!r}") from None


def run_module(args: dict[str, Any], check: bool = False) -> dict[str, Any]:
    return finish(start_module(args, check))


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def numbered_rows(dsn: str) -> dict[int, dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM opsbook.schema_migrations ORDER BY version")
        names = [c.name for c in cur.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def prisma_rows(dsn: str) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM _prisma_migrations ORDER BY started_at, migration_name")
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def schema_snapshot(dsn: str) -> dict[str, Any]:
    """Everything check mode must leave alone: schemas, tables, columns, indexes, types."""
    return {
        "schemata": query(
            dsn,
            "SELECT schema_name FROM information_schema.schemata"
            " WHERE schema_name NOT LIKE 'pg\\_%' ORDER BY 1",
        ),
        "columns": query(
            dsn,
            "SELECT table_schema, table_name, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3",
        ),
        "constraints": query(
            dsn,
            "SELECT table_schema, table_name, constraint_name, constraint_type"
            " FROM information_schema.table_constraints"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2, 3",
        ),
        "indexes": query(
            dsn,
            "SELECT schemaname, tablename, indexname, indexdef FROM pg_indexes"
            " WHERE schemaname NOT IN ('pg_catalog') ORDER BY 1, 2, 3",
        ),
        "types": query(
            dsn,
            "SELECT t.typname, e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid"
            " ORDER BY 1, e.enumsortorder",
        ),
        "users": query(dsn, "SELECT count(*), sum(length(email)) FROM users")
        if query(dsn, "SELECT to_regclass('public.users') IS NOT NULL")[0][0]
        else None,
    }


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def new_db(pg: PostgresCluster) -> Iterator[Callable[..., str]]:
    """new_db(app_schema=False) -> DSN of a fresh database mig_<hex>, dropped afterwards."""
    created: list[str] = []

    def make(app_schema: bool = False) -> str:
        name = f"mig_{uuid.uuid4().hex[:12]}"
        dsn = pg.create_database(name)
        created.append(name)
        if app_schema:
            load_app_schema(dsn, users=20, tasks_per_user=3)
        return dsn

    yield make
    for name in created:
        pg.drop_database(name)


# ------------------------------------------------------------------ numbered layout


def test_numbered_apply_in_order_then_idempotent(new_db: Callable[..., str]) -> None:
    dsn = new_db(app_schema=True)
    args = module_args(dsn, EXAMPLES / "numbered", action="apply", applied_by="alice (run r-1)")

    first = run_module(args)
    assert not first.get("failed"), first["msg"]
    assert first["changed"] is True
    assert first["layout"] == "numbered"
    assert [a["version"] for a in first["applied"]] == [1, 2, 3, 4]
    assert all(isinstance(a["execution_ms"], int) for a in first["applied"])
    assert [a["transactional"] for a in first["applied"]] == [True, True, False, True]
    assert first["previous_version"] is None and first["current_version"] == 4
    assert first["pending"] == [] and first["problems"] == []

    rows = numbered_rows(dsn)
    assert list(rows) == [1, 2, 3, 4]
    for version, row in rows.items():
        path = EXAMPLES / "numbered" / f"{row['name']}.sql"
        assert row["status"] == "applied"
        assert row["checksum"] == sha(path)
        assert row["applied_by"] == "alice (run r-1)"
        assert row["execution_ms"] >= 0 and row["applied_at"] >= row["started_at"]
        assert row["error"] is None
        assert row["transactional"] is (version != 3)
    # applied in order: each one finished before the next started
    starts = [rows[v]["started_at"] for v in (1, 2, 3, 4)]
    assert starts == sorted(starts)
    assert query(dsn, "SELECT count(*) FROM users WHERE last_seen_at IS NULL")[0][0] == 0
    assert query(dsn, "SELECT to_regclass('public.task_comments') IS NOT NULL")[0][0]

    again = run_module(args)
    assert not again.get("failed"), again["msg"]
    assert again["changed"] is False and again["applied"] == []
    assert "up to date" in again["msg"]
    assert numbered_rows(dsn) == rows

    status = run_module(module_args(dsn, EXAMPLES / "numbered"))
    assert status["changed"] is False
    assert [m["state"] for m in status["migrations"]] == ["applied"] * 4
    assert status["msg"].endswith("current version 4, 4 applied, 0 pending")


def test_apply_up_to_a_target_and_out_of_order_refused(
    new_db: Callable[..., str], tmp_path: Path
) -> None:
    dsn = new_db(app_schema=True)
    migrations = copy_dir(EXAMPLES / "numbered", tmp_path / "m")
    result = run_module(module_args(dsn, migrations, action="apply", target="2"))
    assert [a["version"] for a in result["applied"]] == [1, 2]
    assert [p["version"] for p in result["pending"]] == [3, 4]
    # a migration merged late, numbered below the current version
    shutil.move(migrations / "migration-003-index-tasks-title.sql", tmp_path / "held-back.sql")
    (migrations / "migration-003-index-tasks-title.down.sql").unlink()
    assert run_module(module_args(dsn, migrations, action="apply"))["current_version"] == 4
    shutil.move(tmp_path / "held-back.sql", migrations / "migration-003-index-tasks-title.sql")
    refused = run_module(module_args(dsn, migrations, action="apply"))
    assert refused["failed"] is True
    assert "older than the current version 4: migration-003-index-tasks-title" in refused["msg"]
    assert [m["version"] for m in refused["out_of_order"]] == [3]
    allowed = run_module(module_args(dsn, migrations, action="apply", allow_out_of_order=True))
    assert not allowed.get("failed"), allowed["msg"]
    assert [a["version"] for a in allowed["applied"]] == [3]


def test_drift_is_an_error_and_nothing_runs(new_db: Callable[..., str], tmp_path: Path) -> None:
    dsn = new_db(app_schema=True)
    migrations = copy_dir(EXAMPLES / "numbered", tmp_path / "m")
    run_module(module_args(dsn, migrations, action="apply", target="2"))
    edited = migrations / "migration-001-add-user-roles.sql"
    edited.write_text(edited.read_text().replace("'owner'", "'owner', 'guest'"))
    before = schema_snapshot(dsn)

    result = run_module(module_args(dsn, migrations, action="apply"))
    assert result["failed"] is True
    assert "apply refused, nothing was run or recorded" in result["msg"]
    assert "migration-001-add-user-roles changed after it was applied" in result["msg"]
    assert result["applied"] == []
    assert [d["version"] for d in result["drift"]] == [1]
    assert result["drift"][0]["file_checksum"] == sha(edited)
    assert schema_snapshot(dsn) == before
    assert list(numbered_rows(dsn)) == [1, 2]

    # status reports it without failing; check mode refuses too; down as well
    status = run_module(module_args(dsn, migrations))
    assert not status.get("failed")
    assert status["migrations"][0]["state"] == "drift"
    assert "1 drift" in status["msg"]
    assert run_module(module_args(dsn, migrations, action="apply"), check=True)["failed"] is True
    down = run_module(module_args(dsn, migrations, action="down", target="0"))
    assert down["failed"] is True and "down refused" in down["msg"]
    assert schema_snapshot(dsn) == before


def test_failing_migration_is_recorded_and_blocks_until_resolved(
    new_db: Callable[..., str], tmp_path: Path
) -> None:
    dsn = new_db(app_schema=True)
    migrations = tmp_path / "m"
    migrations.mkdir()
    (migrations / "migration-001-ok.sql").write_text("CREATE TABLE ok_one (id int);\n")
    bad = migrations / "migration-002-bad.sql"
    bad.write_text("CREATE TABLE half_done (id int);\n\nSELECT missing_column FROM users;\n")
    (migrations / "migration-003-after.sql").write_text("CREATE TABLE after_bad (id int);\n")
    args = module_args(dsn, migrations, action="apply")

    failed = run_module(args)
    assert failed["failed"] is True
    assert failed["changed"] is True  # 001 was applied
    assert "migration-002-bad.sql failed" in failed["msg"]
    assert 'column "missing_column" does not exist (42703) at line 3' in failed["msg"]
    assert "its changes were rolled back" in failed["msg"]
    assert [a["version"] for a in failed["applied"]] == [1]
    rows = numbered_rows(dsn)
    assert rows[2]["status"] == "failed"
    assert "missing_column" in rows[2]["error"]
    assert rows[2]["applied_at"] is None
    assert 3 not in rows
    assert query(dsn, "SELECT to_regclass('public.half_done')")[0][0] is None  # rolled back
    assert [f["version"] for f in failed["failed_migrations"]] == [2]

    # blocked: nothing runs, even after the file is fixed, until resolved
    bad.write_text("CREATE TABLE half_done (id int);\n\nSELECT email FROM users;\n")
    blocked = run_module(args)
    assert blocked["failed"] is True and blocked["changed"] is False
    assert "migration migration-002-bad failed" in blocked["msg"]
    assert "resolve it (action=resolve" in blocked["msg"]
    assert 3 not in numbered_rows(dsn)

    wrong = run_module(
        module_args(dsn, migrations, action="resolve", migration="1", resolve_as="rolled_back")
    )
    assert wrong["failed"] is True and "not in a failed state" in wrong["msg"]

    resolved = run_module(
        module_args(dsn, migrations, action="resolve", migration="002", resolve_as="rolled_back")
    )
    assert not resolved.get("failed"), resolved["msg"]
    assert resolved["resolved"] == {
        "migration": "migration-002-bad",
        "as": "rolled_back",
        "rows": 1,
    }
    assert numbered_rows(dsn)[2]["status"] == "rolled_back"
    assert numbered_rows(dsn)[2]["resolved_at"] is not None

    done = run_module(args)
    assert not done.get("failed"), done["msg"]
    assert [a["version"] for a in done["applied"]] == [2, 3]
    rows = numbered_rows(dsn)
    assert {v: r["status"] for v, r in rows.items()} == {1: "applied", 2: "applied", 3: "applied"}
    assert rows[2]["error"] is None and rows[2]["checksum"] == sha(bad)


def test_resolve_applied_records_without_running(
    new_db: Callable[..., str], tmp_path: Path
) -> None:
    dsn = new_db(app_schema=True)
    migrations = tmp_path / "m"
    migrations.mkdir()
    (migrations / "migration-001-fails.sql").write_text("CREATE TABLE x (id int); SELECT 1/0;\n")
    (migrations / "migration-002-next.sql").write_text("CREATE TABLE y (id int);\n")
    assert run_module(module_args(dsn, migrations, action="apply"))["failed"] is True
    query(dsn, "CREATE TABLE x (id int)")  # the operator completes it by hand
    check = run_module(
        module_args(dsn, migrations, action="resolve", migration="1", resolve_as="applied"),
        check=True,
    )
    assert check["changed"] is True and numbered_rows(dsn)[1]["status"] == "failed"
    resolved = run_module(
        module_args(dsn, migrations, action="resolve", migration="1", resolve_as="applied")
    )
    assert not resolved.get("failed"), resolved["msg"]
    row = numbered_rows(dsn)[1]
    assert row["status"] == "applied" and row["resolved_at"] is not None
    assert "division by zero" in row["error"]  # the history of what happened stays
    again = run_module(
        module_args(dsn, migrations, action="resolve", migration="1", resolve_as="applied")
    )
    assert again["failed"] is True and "already applied" in again["msg"]
    done = run_module(module_args(dsn, migrations, action="apply"))
    assert [a["version"] for a in done["applied"]] == [2]


# ------------------------------------------------------------------ the advisory lock


def wait_for_lock(
    dsn: str, application_name: str, granted: bool = True, timeout: float = 20
) -> int:
    """The pid of the session application_name once it holds (or waits for) the lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = query(
            dsn,
            "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted = %s AND l.objid = 72707369"
            " AND a.application_name = %s",
            (granted, application_name),
        )
        if rows:
            return int(rows[0][0])
        time.sleep(0.05)
    state = "take" if granted else "wait for"
    raise AssertionError(f"no session {application_name} came to {state} the advisory lock")


def test_two_runs_never_interleave(new_db: Callable[..., str], tmp_path: Path) -> None:
    dsn = new_db()
    migrations = tmp_path / "m"
    migrations.mkdir()
    # migration 001 is slow for as long as the test holds the advisory lock 4242 (then a
    # short sleep): run a holds the migration lock all that time, whatever the machine's load
    (migrations / "migration-001-slow.sql").write_text(
        "CREATE TABLE runs (id serial, pid int DEFAULT pg_backend_pid(), at timestamptz"
        " DEFAULT clock_timestamp());\nINSERT INTO runs DEFAULT VALUES;\n"
        "SELECT pg_advisory_xact_lock(4242);\nSELECT pg_sleep(0.5);\n"
        "INSERT INTO runs DEFAULT VALUES;\n"
    )
    (migrations / "migration-002-next.sql").write_text("INSERT INTO runs DEFAULT VALUES;\n")
    gate = psycopg.connect(dsn, autocommit=True)
    gate.execute("SELECT pg_advisory_lock(4242)")

    run_a = start_module(module_args(dsn, migrations, action="apply", application_name="run-a"))
    holder_pid = wait_for_lock(dsn, "run-a")
    # a second run that waits (long timeout) and a third that gives up after 1 s
    run_b = start_module(
        module_args(dsn, migrations, action="apply", application_name="run-b", lock_timeout_s=30)
    )
    wait_for_lock(dsn, "run-b", granted=False)  # b is queued behind a
    started_c = time.monotonic()
    result_c = run_module(
        module_args(dsn, migrations, action="apply", application_name="run-c", lock_timeout_s=1)
    )
    assert time.monotonic() - started_c < 10
    assert result_c["failed"] is True
    assert "another migration run holds the advisory lock 72707369" in result_c["msg"]
    assert f"session pid {holder_pid} (run-a" in result_c["msg"]
    assert "Nothing was run or recorded" in result_c["msg"]
    assert result_c["lock"]["holder"]["application_name"] == "run-a"
    assert result_c["lock"]["waited_ms"] >= 900

    gate.execute("SELECT pg_advisory_unlock(4242)")  # let run a go on
    gate.close()
    result_a = finish(run_a)
    result_b = finish(run_b)
    assert not result_a.get("failed"), result_a["msg"]
    assert [a["version"] for a in result_a["applied"]] == [1, 2]
    # b waited for a, then read the history afresh: nothing left to apply, nothing twice
    assert not result_b.get("failed"), result_b["msg"]
    assert result_b["applied"] == [] and result_b["changed"] is False
    assert result_b["lock"]["waited_ms"] >= 100
    runs = query(dsn, "SELECT pid FROM runs ORDER BY at")
    assert len(runs) == 3 and {r[0] for r in runs} == {holder_pid}  # all from run a's session
    assert {v: r["status"] for v, r in numbered_rows(dsn).items()} == {1: "applied", 2: "applied"}


# ------------------------------------------------------------------ check mode


def test_check_mode_leaves_the_schema_unchanged_and_reports_the_error(
    new_db: Callable[..., str], tmp_path: Path
) -> None:
    dsn = new_db(app_schema=True)
    migrations = copy_dir(EXAMPLES / "numbered", tmp_path / "m")
    before = schema_snapshot(dsn)

    good = run_module(module_args(dsn, migrations, action="apply"), check=True)
    assert not good.get("failed"), good["msg"]
    assert good["changed"] is True and good["applied"] == []
    assert [c["result"] for c in good["checked"]] == ["ok", "ok", "not_checkable", "ok"]
    assert "not checkable (outside a transaction): migration-003-index-tasks-title" in good["msg"]
    assert schema_snapshot(dsn) == before

    (migrations / "migration-005-bad.sql").write_text(
        "-- references a column no migration creates\n"
        "UPDATE tasks SET title = title || '!' WHERE owner_email IS NOT NULL;\n"
    )
    (migrations / "migration-006-later.sql").write_text("CREATE TABLE later (id int);\n")
    bad = run_module(module_args(dsn, migrations, action="apply"), check=True)
    assert bad["failed"] is True
    assert bad["msg"].startswith(
        "pg_migrate: check mode: apply would fail at migration-005-bad.sql: column "
        '"owner_email" does not exist (42703) at line 2'
    )
    assert "Nothing was changed" in bad["msg"]
    assert [c["result"] for c in bad["checked"]] == [
        "ok",
        "ok",
        "not_checkable",
        "ok",
        "error",
        "not_checked",
    ]
    assert schema_snapshot(dsn) == before
    assert query(dsn, "SELECT to_regclass('opsbook.schema_migrations')")[0][0] is None

    # after a real apply of 1-4, check mode of a down leaves everything too
    (migrations / "migration-005-bad.sql").unlink()
    (migrations / "migration-006-later.sql").unlink()
    run_module(module_args(dsn, migrations, action="apply"))
    applied = schema_snapshot(dsn)
    rows = numbered_rows(dsn)
    down = run_module(module_args(dsn, migrations, action="down", target="1"), check=True)
    assert not down.get("failed"), down["msg"]
    assert [c["version"] for c in down["checked"]] == [4, 3, 2]
    assert schema_snapshot(dsn) == applied and numbered_rows(dsn) == rows


# ------------------------------------------------------------------ down


@pytest.mark.parametrize(
    ("params", "missing"),
    [
        ({"action": "down"}, "action is down but all of the following are missing: target"),
        (
            {"action": "resolve", "migration": "2"},
            "action is resolve but all of the following are missing: resolve_as",
        ),
    ],
)
def test_what_an_action_needs_is_checked_before_anything_runs(
    new_db: Callable[..., str], params: dict[str, Any], missing: str
) -> None:
    """The argument spec's required_if (ARGUMENT_RULES), applied by AnsibleModule in main()."""
    dsn = new_db(app_schema=True)
    result = run_module(module_args(dsn, EXAMPLES / "numbered", **params))
    assert result["failed"] is True and result["msg"] == missing
    assert query(dsn, "SELECT to_regclass('opsbook.schema_migrations')") == [(None,)]


def test_down_to_a_target(new_db: Callable[..., str], tmp_path: Path) -> None:
    dsn = new_db(app_schema=True)
    migrations = copy_dir(EXAMPLES / "numbered", tmp_path / "m")
    before = schema_snapshot(dsn)
    run_module(module_args(dsn, migrations, action="apply", target="1"))
    after_one = schema_snapshot(dsn)
    run_module(module_args(dsn, migrations, action="apply"))

    down = run_module(module_args(dsn, migrations, action="down", target="1"))
    assert not down.get("failed"), down["msg"]
    assert [r["version"] for r in down["reverted"]] == [4, 3, 2]
    assert down["current_version"] == 1 and down["previous_version"] == 4
    assert schema_snapshot(dsn) == after_one
    rows = numbered_rows(dsn)
    assert {v: r["status"] for v, r in rows.items()} == {
        1: "applied",
        2: "reverted",
        3: "reverted",
        4: "reverted",
    }
    assert rows[3]["down_checksum"] == sha(migrations / "migration-003-index-tasks-title.down.sql")
    assert [p["version"] for p in down["pending"]] == [2, 3, 4]

    nothing = run_module(module_args(dsn, migrations, action="down", target="1"))
    assert nothing["changed"] is False and "nothing above 1 to revert" in nothing["msg"]

    # re-applied after a down: the rows become applied again
    again = run_module(module_args(dsn, migrations, action="apply"))
    assert [a["version"] for a in again["applied"]] == [2, 3, 4]
    assert numbered_rows(dsn)[3]["reverted_at"] is None

    # a missing down file stops the whole down before anything is reverted
    (migrations / "migration-002-create-task-comments.down.sql").unlink()
    refused = run_module(module_args(dsn, migrations, action="down", target="0"))
    assert refused["failed"] is True
    assert "no .down.sql: migration-002-create-task-comments" in refused["msg"]
    assert "Nothing was reverted" in refused["msg"]
    assert all(r["status"] == "applied" for r in numbered_rows(dsn).values())
    (migrations / "migration-002-create-task-comments.down.sql").write_text(
        "DROP TABLE task_comments;\n"
    )
    zero = run_module(module_args(dsn, migrations, action="down", target="0"))
    assert [r["version"] for r in zero["reverted"]] == [4, 3, 2, 1]
    assert zero["current_version"] is None

    def public(snapshot: dict[str, Any]) -> list[Any]:
        return [c for c in snapshot["columns"] if c[0] == "public"]

    assert public(schema_snapshot(dsn)) == public(before)  # back to the app schema


# ------------------------------------------------------------------ non-transactional


def test_non_transactional_create_index_concurrently(
    new_db: Callable[..., str], tmp_path: Path
) -> None:
    dsn = new_db(app_schema=True)
    migrations = tmp_path / "m"
    migrations.mkdir()
    # not marked: detected
    (migrations / "migration-001-index.sql").write_text(
        "-- speeds up the due-date report\n"
        "CREATE INDEX CONCURRENTLY tasks_due_at_idx ON tasks (due_at);\n"
    )
    result = run_module(module_args(dsn, migrations, action="apply"))
    assert not result.get("failed"), result["msg"]
    assert result["applied"][0]["transactional"] is False
    note = run_module(module_args(dsn, migrations))["migrations"][0]["transaction_note"]
    assert note == "CREATE INDEX CONCURRENTLY (line 2) cannot run inside a transaction block"
    assert query(
        dsn,
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'tasks_due_at_idx'::regclass",
    ) == [(True,)]
    assert numbered_rows(dsn)[1]["transactional"] is False

    # a failing concurrent build: recorded as failed, says what is left behind
    query(dsn, "UPDATE users SET name = 'same'")
    (migrations / "migration-002-unique-name.sql").write_text(
        "CREATE UNIQUE INDEX CONCURRENTLY users_name_key ON users (name);\n"
    )
    failed = run_module(module_args(dsn, migrations, action="apply"))
    assert failed["failed"] is True
    assert "could not create unique index" in failed["msg"]
    assert "0 of 1 statements ran and stay applied" in failed["msg"]
    assert "leaves an INVALID index" in failed["msg"]
    assert query(
        dsn, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_name_key'::regclass"
    ) == [(False,)]
    row = numbered_rows(dsn)[2]
    assert row["status"] == "failed" and row["transactional"] is False

    # marked: statements run one by one and stay applied up to the failure
    query(dsn, "DROP INDEX users_name_key")
    run_module(
        module_args(dsn, migrations, action="resolve", migration="2", resolve_as="rolled_back")
    )
    (migrations / "migration-002-unique-name.sql").write_text(
        "-- opsbook: no-transaction\nCREATE TABLE step_one (id int);\nSELECT 1/0;\n"
    )
    marked = run_module(module_args(dsn, migrations, action="apply"))
    assert marked["failed"] is True
    assert "division by zero (22012) at line 3" in marked["msg"]
    assert "1 of 2 statements ran and stay applied" in marked["msg"]
    assert query(dsn, "SELECT to_regclass('public.step_one') IS NOT NULL") == [(True,)]
    assert numbered_rows(dsn)[2]["status"] == "failed"


# ------------------------------------------------------------------ Prisma layout


def test_prisma_apply_in_order_idempotent_with_prismas_table(new_db: Callable[..., str]) -> None:
    dsn = new_db()  # empty: 0_init creates the app schema
    args = module_args(dsn, EXAMPLES / "prisma", action="apply")
    result = run_module(args)
    assert not result.get("failed"), result["msg"]
    names = [
        "0_init",
        "20240601120000_add_user_role",
        "20240615090000_add_task_comments",
        "20240701080000_add_role_owner",
    ]
    assert result["layout"] == "prisma"
    assert [a["version"] for a in result["applied"]] == names
    assert result["applied"][-1]["transactional"] is False  # ALTER TYPE ... ADD VALUE
    assert result["current_version"] == names[-1]
    assert query(dsn, 'SELECT enum_range(NULL::"UserRole")::text') == [("{MEMBER,ADMIN,OWNER}",)]

    # the table has Prisma's exact columns, types, defaults, nullability and primary key
    reference = new_db()
    query(reference, PRISMA_ENGINE_DDL)
    columns_sql = (
        "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default,"
        " ordinal_position FROM information_schema.columns"
        " WHERE table_name = '_prisma_migrations' ORDER BY ordinal_position"
    )
    constraints_sql = (
        "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = '_prisma_migrations'::regclass ORDER BY 1"
    )
    assert query(dsn, columns_sql) == query(reference, columns_sql)
    assert query(dsn, constraints_sql) == query(reference, constraints_sql)

    # the rows Prisma writes for applied migrations
    rows = prisma_rows(dsn)
    assert [r["migration_name"] for r in rows] == names
    for row in rows:
        assert str(uuid.UUID(row["id"])) == row["id"] and uuid.UUID(row["id"]).version == 4
        assert row["checksum"] == sha(EXAMPLES / "prisma" / row["migration_name"] / "migration.sql")
        assert row["finished_at"] is not None and row["finished_at"] >= row["started_at"]
        assert row["logs"] is None and row["rolled_back_at"] is None
        assert row["applied_steps_count"] == 1

    again = run_module(args)
    assert again["changed"] is False and again["applied"] == []
    assert prisma_rows(dsn) == rows


def test_prisma_baseline_failure_resolve_and_drift(
    new_db: Callable[..., str], tmp_path: Path
) -> None:
    dsn = new_db(app_schema=True)  # an existing database: Prisma's P3005 until baselined
    migrations = copy_dir(EXAMPLES / "prisma", tmp_path / "migrations")
    args = module_args(dsn, migrations, action="apply")

    refused = run_module(args)
    assert refused["failed"] is True and "(Prisma's P3005)" in refused["msg"]
    assert query(dsn, "SELECT to_regclass('public._prisma_migrations')")[0][0] is None

    baseline = run_module(
        module_args(dsn, migrations, action="resolve", migration="0_init", resolve_as="applied")
    )
    assert not baseline.get("failed"), baseline["msg"]
    (row,) = prisma_rows(dsn)
    # prisma migrate resolve --applied: logs '', started_at = finished_at, no steps
    assert row["logs"] == "" and row["started_at"] == row["finished_at"]
    assert row["applied_steps_count"] == 0 and row["rolled_back_at"] is None

    bad = migrations / "20240620000000_bad"
    bad.mkdir()
    (bad / "migration.sql").write_text(
        '-- AlterTable\nALTER TABLE "nope" ADD COLUMN "x" INTEGER;\n'
    )
    failed = run_module(args)
    assert failed["failed"] is True
    assert "20240620000000_bad/migration.sql failed" in failed["msg"]
    assert [a["version"] for a in failed["applied"]] == [
        "20240601120000_add_user_role",
        "20240615090000_add_task_comments",
    ]
    failed_row = next(r for r in prisma_rows(dsn) if r["migration_name"] == bad.name)
    assert failed_row["finished_at"] is None and failed_row["rolled_back_at"] is None
    assert failed_row["applied_steps_count"] == 0
    assert 'relation "nope" does not exist' in failed_row["logs"]
    assert failed_row["logs"].startswith("A migration failed to apply.")

    blocked = run_module(args)
    assert blocked["failed"] is True and "migration 20240620000000_bad failed" in blocked["msg"]

    (bad / "migration.sql").write_text(
        '-- AlterTable\nALTER TABLE "tasks" ADD COLUMN "x" INTEGER;\n'
    )
    run_module(
        module_args(dsn, migrations, action="resolve", migration=bad.name, resolve_as="rolled_back")
    )
    done = run_module(args)
    assert not done.get("failed"), done["msg"]
    assert [a["version"] for a in done["applied"]] == [bad.name, "20240701080000_add_role_owner"]
    bad_rows = [r for r in prisma_rows(dsn) if r["migration_name"] == bad.name]
    assert [(r["finished_at"] is None, r["rolled_back_at"] is None) for r in bad_rows] == [
        (True, False),  # the failed try, rolled back, kept as history
        (False, True),  # the successful one
    ]

    # CRLF checkouts are not drift (Prisma compares line-ending tolerant); an edit is
    init = migrations / "0_init" / "migration.sql"
    init.write_bytes(init.read_bytes().replace(b"\n", b"\r\n"))
    assert run_module(module_args(dsn, migrations))["drift"] == []
    (migrations / "20240601120000_add_user_role" / "migration.sql").write_text("SELECT 1;\n")
    drift = run_module(args)
    assert drift["failed"] is True and "changed after it was applied" in drift["msg"]
    assert [d["version"] for d in drift["drift"]] == ["20240601120000_add_user_role"]


def test_prisma_schema_from_the_dsn(new_db: Callable[..., str], tmp_path: Path) -> None:
    dsn = new_db()
    query(dsn, "CREATE SCHEMA tenant_1")
    migrations = tmp_path / "migrations"
    (migrations / "20240101000000_init").mkdir(parents=True)
    (migrations / "20240101000000_init" / "migration.sql").write_text(
        'CREATE TABLE "Note" ("id" SERIAL NOT NULL, CONSTRAINT "Note_pkey" PRIMARY KEY ("id"));\n'
    )
    result = run_module(
        module_args(f"{dsn}?schema=tenant_1&connection_limit=5", migrations, action="apply")
    )
    assert not result.get("failed"), result["msg"]
    assert query(dsn, "SELECT to_regclass('tenant_1.\"Note\"') IS NOT NULL") == [(True,)]
    assert query(dsn, "SELECT count(*) FROM tenant_1._prisma_migrations") == [(1,)]
    assert query(dsn, "SELECT to_regclass('public._prisma_migrations')") == [(None,)]


# ------------------------------------------------------------------ the playbook


def test_playbook_status_apply_check_and_production_down(
    new_db: Callable[..., str],
    make_inventory: Callable[..., Path],
    run_playbook: Any,
    tmp_path: Path,
) -> None:
    dsn = new_db(app_schema=True)
    database = dsn.rsplit("/", 1)[1]
    inventory = make_inventory(env="production", app_hosts=[], database_url=dsn)
    relative = os.path.relpath(EXAMPLES / "numbered", PROJECT_ROOT)

    status = run_with_stats(
        run_playbook,
        tmp_path,
        "db_migrate",
        inventory,
        extravars={"migrations_dir": relative, "migrate_action": "status"},
    )
    assert status.rc == 0, status.output
    stats = status.stats["db_migrate"]
    assert stats["action"] == "status" and stats["ok"] is True
    assert stats["database"] == database and stats["layout"] == "numbered"
    assert len(stats["pending"]) == 4 and stats["current_version"] is None

    checked = run_with_stats(
        run_playbook,
        tmp_path,
        "db_migrate",
        inventory,
        extravars={"migrations_dir": relative},
        check=True,
    )
    assert checked.rc == 0, checked.output
    cstats = checked.stats["db_migrate"]
    assert cstats["check_mode"] is True and cstats["applied"] == []
    assert [c["result"] for c in cstats["checked"]] == ["ok", "ok", "not_checkable", "ok"]
    assert query(dsn, "SELECT to_regclass('opsbook.schema_migrations')")[0][0] is None

    applied = run_with_stats(
        run_playbook,
        tmp_path,
        "db_migrate",
        inventory,
        extravars={"migrations_dir": relative},
        env={"OPSBOOK_OPERATOR": "alice", "OPSBOOK_RUN_ID": "run-42"},
    )
    assert applied.rc == 0, applied.output
    astats = applied.stats["db_migrate"]
    assert astats["ok"] is True and astats["current_version"] == 4
    assert [a["name"] for a in astats["applied"]] == [
        "migration-001-add-user-roles",
        "migration-002-create-task-comments",
        "migration-003-index-tasks-title",
        "migration-004-add-users-last-seen",
    ]
    assert all("execution_ms" in a for a in astats["applied"])
    assert "Version none -> 4" in astats["summary"]
    assert numbered_rows(dsn)[1]["applied_by"] == "alice (run run-42)"
    assert dsn.split("@")[0].split(":")[-1] not in applied.output  # the password never shows

    # production: a down needs the typed confirmation; a wrong one is refused too
    no_confirm = f"opsbook_env is production: down on database {database} needs the typed"
    for extra, refusal in (
        ({}, f"{no_confirm} confirmation"),
        ({"confirm": "app"}, f"confirm (app) does not equal the name of the database ({database})"),
    ):
        refused = run_with_stats(
            run_playbook,
            tmp_path,
            "db_migrate",
            inventory,
            extravars={
                "migrations_dir": relative,
                "migrate_action": "down",
                "migrate_target": 2,
                **extra,
            },
        )
        assert refused.rc != 0
        assert (
            f"Migration refused: {refusal}: re-run with -e confirm={database} to go ahead. "
            "Nothing was changed."
        ) in refused.output
    assert all(r["status"] == "applied" for r in numbered_rows(dsn).values())

    down = run_with_stats(
        run_playbook,
        tmp_path,
        "db_migrate",
        inventory,
        extravars={
            "migrations_dir": relative,
            "migrate_action": "down",
            "migrate_target": 2,
            "confirm": database,
        },
    )
    assert down.rc == 0, down.output
    dstats = down.stats["db_migrate"]
    assert [r["version"] for r in dstats["reverted"]] == [4, 3]
    assert dstats["previous_version"] == 4 and dstats["current_version"] == 2


def test_playbook_failure_publishes_the_outcome(
    new_db: Callable[..., str],
    make_inventory: Callable[..., Path],
    run_playbook: Any,
    tmp_path: Path,
) -> None:
    dsn = new_db(app_schema=True)
    migrations = tmp_path / "m"
    migrations.mkdir()
    (migrations / "migration-001-ok.sql").write_text("CREATE TABLE ok_one (id int);\n")
    (migrations / "migration-002-bad.sql").write_text("SELECT * FROM no_such_table;\n")
    inventory = make_inventory(app_hosts=[], database_url=dsn)
    run = run_with_stats(
        run_playbook,
        tmp_path,
        "db_migrate",
        inventory,
        extravars={"migrations_dir": str(migrations)},
    )
    assert run.rc != 0
    assert "migration-002-bad.sql failed" in run.output
    assert 'relation "no_such_table" does not exist' in run.output
    stats = run.stats["db_migrate"]
    assert stats["ok"] is False
    assert [a["name"] for a in stats["applied"]] == ["migration-001-ok"]
    assert [f["name"] for f in stats["failed_migrations"]] == ["migration-002-bad"]
    assert stats["current_version"] == 1
