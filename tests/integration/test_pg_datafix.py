"""pg_datafix and playbooks/data_fix.yml against the lab's PostgreSQL.

Every test works in a fresh database of its own (the sample app schema: 200 users, 1000 tasks),
never in database ``app``. "Nothing changed" is checked by comparing the tables' checksums
(row count + md5 of every row) before and after. The playbook runs read their set_stats data
(key data_fix) through tests/integration/stats_helper.py. The module's own cases run through the
real module - AnsibleModule's argument checks and no_log masking included - as tasks of ONE ad hoc
playbook (``module_run``, once for the file: an Ansible start-up per case would cost seconds
each), each case in a database of its own; the tests then read each case's registered result.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from opsbook.lab import PostgresCluster, load_app_schema
from tests.harness import VENV_BIN, ansible_env, run_ansible
from tests.integration.stats_helper import run_with_stats
from tests.lab import app_table_checksums

pytestmark = pytest.mark.integration

FIX_NAME = "data-fix-2025-10-01-team-to-pro.sql"
PASSING_FIX = """-- Data Fix: move the team plan's users to pro (2025-10-01)
-- Ticket: OPS-1
BEGIN;

UPDATE users SET plan = 'pro', updated_at = '2025-10-01T00:00:00Z' WHERE plan = 'team';

COMMIT;
"""
NO_TEAM_LEFT = "SELECT id, email, plan FROM users WHERE plan = 'team' ORDER BY id"


@pytest.fixture
def app_db(pg: PostgresCluster) -> Iterator[tuple[str, str]]:
    """(name, dsn) of a fresh database with the sample app schema; dropped afterwards."""
    name = f"dfx_{uuid.uuid4().hex[:10]}"
    dsn = pg.create_database(name)
    load_app_schema(dsn)
    yield name, dsn
    pg.drop_database(name)


def scalar(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


def write(tmp_path: Path, name: str, sql: str) -> Path:
    path = tmp_path / name
    path.write_text(sql)
    return path


# ----------------------------------------------------------------- through the playbook


def test_a_fix_that_passes_commits_and_reports(
    app_db: tuple[str, str], make_inventory: Callable[..., Path], run_playbook: Any, tmp_path: Path
) -> None:
    name, dsn = app_db
    teams = scalar(dsn, "SELECT count(*) FROM users WHERE plan = 'team'")
    assert teams > 0
    before = app_table_checksums(dsn)
    inventory = make_inventory(app_hosts=[], database_url=dsn)
    fix = write(tmp_path, FIX_NAME, PASSING_FIX)
    run = run_with_stats(
        run_playbook,
        tmp_path,
        "data_fix",
        inventory,
        extravars={
            "data_fix_file": str(fix),
            "data_fix_verify": NO_TEAM_LEFT,
            "data_fix_max_rows": 100,
        },
    )
    assert run.rc == 0, run.output
    report = run.stats["data_fix"]
    assert report["outcome"] == "committed" and report["committed"] is True
    assert report["rows_affected"] == teams and report["failed_check"] is None
    assert report["database"] == name and report["file"] == FIX_NAME
    assert report["verify"]["passed"] is True and report["verify"]["row_count"] == 0
    assert report["statements"][0]["command"] == "UPDATE" and report["statements"][0]["line"] == 5
    assert report["tables_changed"] == [
        {"table": "public.users", "inserted": 0, "updated": teams, "deleted": 0}
    ]
    assert report["backup_id"] is None
    assert (
        "COMMITTED" in report["summary"]
        and "replaced by the module's transaction" in report["summary"]
    )
    assert run.hosts["localhost"]["changed"] == 1
    assert scalar(dsn, "SELECT count(*) FROM users WHERE plan = 'team'") == 0
    after = app_table_checksums(dsn)
    assert after["users"] != before["users"] and after["tasks"] == before["tasks"]


def test_a_fix_that_fails_verification_changes_nothing(
    app_db: tuple[str, str], make_inventory: Callable[..., Path], run_playbook: Any, tmp_path: Path
) -> None:
    _name, dsn = app_db
    remaining = scalar(dsn, "SELECT count(*) FROM users WHERE plan = 'team' AND id % 2 = 1")
    before = app_table_checksums(dsn)
    fix = write(
        tmp_path,
        "data-fix-2025-10-02-half-of-the-teams.sql",
        "UPDATE users SET plan = 'pro' WHERE plan = 'team' AND id % 2 = 0;\n",
    )
    run = run_with_stats(
        run_playbook,
        tmp_path,
        "data_fix",
        make_inventory(app_hosts=[], database_url=dsn),
        extravars={"data_fix_file": str(fix), "data_fix_verify": NO_TEAM_LEFT},
    )
    assert run.rc != 0
    report = run.stats["data_fix"]
    assert report["outcome"] == "rolled_back" and report["committed"] is False
    assert report["failed_check"] == "verify"
    assert report["verify"]["row_count"] == remaining
    assert report["verify"]["columns"] == ["id", "email", "plan"]
    assert len(report["verify"]["rows"]) == min(5, remaining)
    assert all(row[2] == "team" and row[0] % 2 == 1 for row in report["verify"]["rows"])
    assert "ROLLED BACK - nothing was changed (failed: verify)" in run.stdout
    assert "it must return none" in run.stdout
    assert app_table_checksums(dsn) == before


def test_rows_over_max_rows_roll_back(
    app_db: tuple[str, str], make_inventory: Callable[..., Path], run_playbook: Any, tmp_path: Path
) -> None:
    _name, dsn = app_db
    before = app_table_checksums(dsn)
    fix = write(tmp_path, FIX_NAME, PASSING_FIX)
    run = run_with_stats(
        run_playbook,
        tmp_path,
        "data_fix",
        make_inventory(app_hosts=[], database_url=dsn),
        extravars={
            "data_fix_file": str(fix),
            "data_fix_verify": NO_TEAM_LEFT,
            "data_fix_max_rows": 3,
        },
    )
    assert run.rc != 0
    report = run.stats["data_fix"]
    assert report["failed_check"] == "max_rows" and report["outcome"] == "rolled_back"
    assert "more than max_rows 3" in report["error"]
    assert report["verify"]["ran"] is False
    assert app_table_checksums(dsn) == before


def test_check_mode_runs_the_fix_and_rolls_back(
    app_db: tuple[str, str], make_inventory: Callable[..., Path], run_playbook: Any, tmp_path: Path
) -> None:
    _name, dsn = app_db
    teams = scalar(dsn, "SELECT count(*) FROM users WHERE plan = 'team'")
    before = app_table_checksums(dsn)
    fix = write(tmp_path, FIX_NAME, PASSING_FIX)
    run = run_with_stats(
        run_playbook,
        tmp_path,
        "data_fix",
        make_inventory(app_hosts=[], database_url=dsn),
        extravars={"data_fix_file": str(fix), "data_fix_verify": NO_TEAM_LEFT},
        check=True,
    )
    assert run.rc == 0, run.output
    report = run.stats["data_fix"]
    assert report["check_mode"] is True and report["outcome"] == "rolled_back"
    assert report["would_commit"] is True and report["committed"] is False
    assert report["rows_affected"] == teams and report["verify"]["passed"] is True
    assert "CHECK MODE - would commit" in report["summary"]
    assert app_table_checksums(dsn) == before


def test_production_needs_the_typed_confirmation(
    app_db: tuple[str, str], make_inventory: Callable[..., Path], run_playbook: Any, tmp_path: Path
) -> None:
    name, dsn = app_db
    before = app_table_checksums(dsn)
    inventory = make_inventory(env="production", app_hosts=[], database_url=dsn)
    fix = write(tmp_path, FIX_NAME, PASSING_FIX)
    inputs = {"data_fix_file": str(fix), "data_fix_verify": NO_TEAM_LEFT}
    refused = run_playbook("data_fix", inventory, extravars=inputs)
    assert refused.returncode != 0
    assert f"needs the typed confirmation: re-run with -e confirm={name}" in refused.stdout
    wrong = run_playbook("data_fix", inventory, extravars={**inputs, "confirm": "app"})
    assert wrong.returncode != 0
    assert f"confirm (app) does not equal the name of the database ({name})" in wrong.stdout
    assert app_table_checksums(dsn) == before
    confirmed = run_playbook("data_fix", inventory, extravars={**inputs, "confirm": name})
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    assert scalar(dsn, "SELECT count(*) FROM users WHERE plan = 'team'") == 0


def test_backup_first_takes_a_backup_before_the_fix(
    app_db: tuple[str, str], make_inventory: Callable[..., Path], run_playbook: Any, tmp_path: Path
) -> None:
    name, dsn = app_db
    backups = tmp_path / "fix-backups"
    backups.mkdir()
    inventory = make_inventory(
        app_hosts=[], database_url=dsn, backup_storage_url=f"file://{backups}"
    )
    fix = write(tmp_path, FIX_NAME, PASSING_FIX)
    run = run_with_stats(
        run_playbook,
        tmp_path,
        "data_fix",
        inventory,
        extravars={
            "data_fix_file": str(fix),
            "data_fix_verify": NO_TEAM_LEFT,
            "backup_first": True,
        },
    )
    assert run.rc == 0, run.output
    backup_id = run.stats["data_fix"]["backup_id"]
    assert backup_id and backup_id.startswith(f"{name}-")
    assert run.stats["backup"]["backup_id"] == backup_id and run.stats["backup"]["verified"] is True
    manifest = json.loads((backups / backup_id / "manifest.json").read_text())
    assert manifest["labels"] == {"trigger": "data_fix", "data_fix": FIX_NAME}
    assert manifest["reason"].startswith(f"before data fix {FIX_NAME}")
    assert manifest["table_counts"]["public.users"] == 200
    assert f"Backup taken before the fix: {backup_id}" in run.stdout


def test_a_file_with_its_own_commit_is_refused_before_any_backup(
    app_db: tuple[str, str], make_inventory: Callable[..., Path], run_playbook: Any, tmp_path: Path
) -> None:
    _name, dsn = app_db
    before = app_table_checksums(dsn)
    backups = tmp_path / "fix-backups"
    backups.mkdir()
    fix = write(
        tmp_path,
        "fix-two-transactions.sql",
        "UPDATE users SET plan = 'pro' WHERE id = 1;\nCOMMIT;\nUPDATE users SET plan = 'free';\n",
    )
    run = run_playbook(
        "data_fix",
        make_inventory(app_hosts=[], database_url=dsn, backup_storage_url=f"file://{backups}"),
        extravars={
            "data_fix_file": str(fix),
            "data_fix_verify": NO_TEAM_LEFT,
            "backup_first": True,
        },
    )
    assert run.returncode != 0
    # the module's refusal is the task's own failure line (issue 12: one failure, one line)
    assert "fatal: [localhost]" in run.stdout and "output has been hidden" not in run.stdout
    assert "refused, nothing was run: statement 2 (line 2) is COMMIT" in run.stdout
    assert "does not follow the convention data-fix-YYYY-MM-DD-description.sql" in (
        run.stdout + run.stderr
    )
    assert list(backups.iterdir()) == []
    assert app_table_checksums(dsn) == before


def test_backup_first_without_a_storage_url_and_a_relative_path(
    app_db: tuple[str, str],
    make_inventory: Callable[..., Path],
    run_playbook: Any,
    tmp_path: Path,
    project_root: Path,
) -> None:
    _name, dsn = app_db
    fix = write(tmp_path, FIX_NAME, PASSING_FIX)
    relative = os.path.relpath(fix, project_root)  # ansible-playbook runs in the project root
    inputs = {"data_fix_file": relative, "data_fix_verify": NO_TEAM_LEFT, "backup_first": True}
    refused = run_playbook(
        "data_fix", make_inventory(app_hosts=[], database_url=dsn, backup_storage_url=""), inputs
    )
    assert refused.returncode != 0
    assert "backup_first needs backup_storage_url (where the backup goes)" in refused.stdout
    missing = run_playbook(
        "data_fix",
        make_inventory(app_hosts=[], database_url=dsn),
        {**inputs, "data_fix_file": "no/such/data-fix-2025-10-01-x.sql"},
    )
    assert missing.returncode != 0
    assert "data-fix-2025-10-01-x.sql does not exist on the controller" in missing.stdout
    assert scalar(dsn, "SELECT count(*) FROM users WHERE plan = 'team'") > 0


# ----------------------------------------------------------------- the module, one playbook


@dataclass
class Case:
    """One pg_datafix task of the module run, on the database ``db`` (a copy of the sample app,
    its own unless cases share it on purpose)."""

    key: str
    db: str
    args: dict[str, Any]
    check_mode: bool = False


NOTHING = "SELECT 1 WHERE false"
BOUNDS = {
    "max_rows_per_statement": {"max_rows_per_statement": 10},
    "min_rows_per_statement": {"min_rows_per_statement": 1},
    "min_rows": {"min_rows": 10_000},
}
CASES = [
    Case("failing_statement", "failing_statement", {
        "content": "UPDATE users SET plan = 'pro' WHERE plan = 'free';\n"
                   "UPDATE users SET plan = 'enterprise' WHERE id = 1;\n",  # the CHECK constraint
        "verify": NOTHING,
    }),
    *(
        Case(f"bounds_{check}", f"bounds_{check}", {
            "content": "UPDATE tasks SET priority = 1 WHERE status = 'todo';\n"
                       "UPDATE tasks SET status = 'archived' WHERE false;\n",
            "verify": NOTHING,
            **bounds,
        })
        for check, bounds in BOUNDS.items()
    ),
    Case("cascades", "cascades", {
        "content": "DELETE FROM users WHERE id = 1;",
        "verify": "SELECT id FROM tasks WHERE user_id = 1",
    }, check_mode=True),
    Case("deferred", "deferred", {  # the table notes is made first (module_run)
        "content": "INSERT INTO notes VALUES (1, 999999);", "verify": NOTHING,
    }),
    Case("verify_writes", "verify_writes", {
        "content": "UPDATE tasks SET priority = 2 WHERE id = 1;",
        "verify": "WITH gone AS (DELETE FROM tasks RETURNING id) SELECT id FROM gone WHERE false",
    }),
    Case("lock_timeout", "lock_timeout", {  # another session holds the row's lock meanwhile
        "content": "UPDATE users SET plan = 'pro' WHERE id = 7;",
        "verify": NOTHING,
        "lock_timeout": "500ms",
    }),
    Case("transaction_modes", "transaction_modes", {
        "content": "BEGIN ISOLATION LEVEL SERIALIZABLE;\n"
                   "UPDATE tasks SET priority = 3 WHERE id = 2;\n"
                   "COMMIT;\n",
        "verify": "SELECT 1 WHERE current_setting('transaction_isolation') <> 'serializable'",
        "statement_timeout": "30s",
    }),
    # the same fix three times on one database, in this order
    Case("rerun_first", "rerun", {"content": PASSING_FIX, "verify": NO_TEAM_LEFT}),
    Case("rerun_second", "rerun", {"content": PASSING_FIX, "verify": NO_TEAM_LEFT}),
    Case("rerun_min_rows", "rerun", {
        "content": PASSING_FIX, "verify": NO_TEAM_LEFT, "min_rows": 1,
    }),
    Case("readers", "readers", {  # a REPEATABLE READ reader has its snapshot open meanwhile
        "content": PASSING_FIX,
        "verify": NO_TEAM_LEFT,
        "lock_timeout": "5s",  # waiting for the reader would fail the case, not hang the run
    }),
    # AnsibleModule's argument checks and the module's own: all three on one database, which
    # must not change (each would commit PASSING_FIX if it ran)
    Case("args_exclusive", "args", {
        "content": PASSING_FIX, "path": "/nonexistent/data-fix-2025-10-01-x.sql",
    }),
    Case("args_type", "args", {"content": PASSING_FIX, "max_rows": "many"}),
    Case("args_ranges", "args", {
        "content": PASSING_FIX, "max_rows": -1, "verify_show_rows": -1,
    }),
    # a SQL-standard function body: its semicolons do not end the statement (opsbook_sql)
    Case("begin_atomic", "begin_atomic", {
        "content": "CREATE FUNCTION dfx_lowered(p int) RETURNS int LANGUAGE sql\n"
                   "BEGIN ATOMIC\n  SELECT CASE WHEN p > 1 THEN p - 1 ELSE p END;\nEND;\n"
                   "UPDATE tasks SET priority = dfx_lowered(priority) WHERE id = 3;\n",
        "verify": NOTHING,
    }),
    # the verify query shows a row holding the DSN's password (table settings, made first)
    Case("masked", "masked", {
        "content": "UPDATE users SET plan = 'pro' WHERE id = 3;",
        "verify": "SELECT key, value FROM settings",
    }),
]  # fmt: skip


@dataclass
class ModuleRun:
    """The module run: every case's registered result, and what was seen around it."""

    results: dict[str, dict[str, Any]]
    dsns: dict[str, str]  # database key -> DSN
    before: dict[str, dict[str, str]]  # database key -> app_table_checksums before the run
    after: dict[str, dict[str, str]]
    output: str  # ansible-playbook's stdout and stderr, at -vvv
    work: Path  # the playbook, the results file, the operation log
    seen: dict[str, Any] = field(default_factory=dict)  # what the other sessions saw

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.results[key]

    def unchanged(self, db: str) -> bool:
        return self.after[db] == self.before[db]


def _module_playbook(work: Path) -> tuple[Path, Path]:
    """One play: a pg_datafix task per case (DSN from the environment: neither the playbook nor
    argv holds the password), every result saved as JSON by case key."""
    results = work / "results.json"
    tasks: list[dict[str, Any]] = []
    for i, case in enumerate(CASES):
        dsn = "{{ lookup('ansible.builtin.env', 'DFX_DSN_" + case.db.upper() + "') }}"
        args = {"dsn": dsn, "name": "data-fix-2025-10-01-test.sql", **case.args}
        tasks.append({
            "name": case.key,
            "opsbook.runbooks.pg_datafix": args,
            "register": f"r{i}",
            "ignore_errors": True,
            "check_mode": case.check_mode,
        })  # fmt: skip
    every = ", ".join(f"'{case.key}': r{i}" for i, case in enumerate(CASES))
    tasks.append({
        "name": "Save the results",
        "ansible.builtin.copy": {
            "content": "{{ {" + every + "} | to_json }}", "dest": str(results), "mode": "0600",
        },
        "check_mode": False,
    })  # fmt: skip
    playbook = work / "pg_datafix-cases.yml"
    play = {"name": "pg_datafix cases", "hosts": "localhost", "gather_facts": False}
    playbook.write_text(json.dumps([{**play, "tasks": tasks}], indent=1))
    return playbook, results


@pytest.fixture(scope="module")
def module_run(
    pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModuleRun]:
    """Every case of CASES through the real module, in one ansible-playbook run (-vvv)."""
    work = tmp_path_factory.mktemp("pg-datafix-module")
    suffix = uuid.uuid4().hex[:8]
    template = f"dfx_tpl_{suffix}"
    load_app_schema(pg.create_database(template))
    names = {db: f"dfx_{db}_{suffix}" for db in sorted({case.db for case in CASES})}
    with pg.connect() as conn:
        for name in names.values():
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
    dsns = {db: pg.dsn_for(name) for db, name in names.items()}
    try:
        with psycopg.connect(dsns["deferred"], autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE notes (id int PRIMARY KEY, user_id bigint REFERENCES users (id)"
                " DEFERRABLE INITIALLY DEFERRED)"
            )
        with psycopg.connect(dsns["masked"], autocommit=True) as conn:
            conn.execute("CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL)")
            conn.execute("INSERT INTO settings VALUES ('db_password', %s)", (pg.password,))
        before = {db: app_table_checksums(dsn) for db, dsn in dsns.items()}
        playbook, results = _module_playbook(work)
        env = ansible_env(
            work / "oplog.jsonl", {f"DFX_DSN_{db.upper()}": dsn for db, dsn in dsns.items()}
        )
        argv = [str(playbook), "-i", "localhost,", "-c", "local", "-vvv",
                "-e", f"ansible_python_interpreter={VENV_BIN / 'python'}"]  # fmt: skip
        seen: dict[str, Any] = {}
        holder = psycopg.connect(dsns["lock_timeout"])
        reader = psycopg.connect(dsns["readers"])
        try:
            holder.execute("UPDATE users SET name = name WHERE id = 7")  # row lock, kept open
            reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            teams = "SELECT count(*) FROM users WHERE plan = 'team'"
            seen["reader_before"] = reader.execute(teams).fetchone()[0]
            proc = run_ansible(argv, env=env, timeout=300, tool="ansible-playbook")
            seen["reader_after"] = reader.execute(teams).fetchone()[0]  # same snapshot
        finally:
            holder.rollback()
            holder.close()
            reader.rollback()
            reader.close()
        assert results.exists(), proc.stdout + proc.stderr
        yield ModuleRun(
            results=json.loads(results.read_text()),
            dsns=dsns,
            before=before,
            after={db: app_table_checksums(dsn) for db, dsn in dsns.items()},
            output=proc.stdout + proc.stderr,
            work=work,
            seen=seen,
        )
    finally:
        for name in [*names.values(), template]:
            pg.drop_database(name)


def test_a_failing_statement_undoes_the_statements_before_it(module_run: ModuleRun) -> None:
    result = module_run["failing_statement"]
    assert result["failed"] is True
    assert result["failed_check"] == "statement_error" and result["outcome"] == "rolled_back"
    assert result["statements"][0]["rows"] == scalar(
        module_run.dsns["failing_statement"], "SELECT count(*) FROM users WHERE plan = 'free'"
    )
    assert result["reason"].startswith("statement 2 (line 2) failed: ")
    assert "users_plan_check" in result["reason"]
    assert result["msg"].startswith("pg_datafix: data fix data-fix-2025-10-01-test.sql ROLLED BACK")
    assert module_run.unchanged("failing_statement")


@pytest.mark.parametrize("check", list(BOUNDS))
def test_bounds_roll_back(module_run: ModuleRun, check: str) -> None:
    result = module_run[f"bounds_{check}"]
    assert result["failed"] is True
    assert result["failed_check"] == check, result["reason"]
    assert result["outcome"] == "rolled_back" and result["committed"] is False
    assert result["bounds"][check] == BOUNDS[check][check]
    assert module_run.unchanged(f"bounds_{check}")


def test_tables_changed_include_cascades_the_tags_do_not_count(module_run: ModuleRun) -> None:
    result = module_run["cascades"]
    assert result["check_mode"] is True and result["failed"] is False
    assert result["would_commit"] is True and result["rows_affected"] == 1
    assert result["tables_changed"] == [
        {"table": "public.tasks", "inserted": 0, "updated": 0, "deleted": 5},
        {"table": "public.users", "inserted": 0, "updated": 0, "deleted": 1},
    ]
    assert module_run.unchanged("cascades")  # check mode: rolled back
    assert scalar(module_run.dsns["cascades"], "SELECT count(*) FROM users WHERE id = 1") == 1


def test_a_deferred_constraint_is_checked_before_the_verify(module_run: ModuleRun) -> None:
    result = module_run["deferred"]
    assert result["failed"] is True and result["failed_check"] == "constraints"
    assert "notes_user_id_fkey" in result["reason"]
    assert result["verify"]["ran"] is False
    assert scalar(module_run.dsns["deferred"], "SELECT count(*) FROM notes") == 0


def test_the_verify_query_cannot_write(module_run: ModuleRun) -> None:
    result = module_run["verify_writes"]
    assert result["failed"] is True and result["failed_check"] == "verify_error"
    assert "read-only transaction" in result["reason"]
    assert module_run.unchanged("verify_writes")


def test_lock_timeout_stops_a_fix_stuck_behind_a_lock(module_run: ModuleRun) -> None:
    result = module_run["lock_timeout"]
    assert result["failed"] is True and result["failed_check"] == "statement_error"
    assert "canceling statement due to lock timeout" in result["reason"]
    assert module_run.unchanged("lock_timeout")


def test_the_files_transaction_modes_apply(module_run: ModuleRun) -> None:
    result = module_run["transaction_modes"]
    assert result["failed"] is False
    assert result["outcome"] == "committed", result["reason"]
    assert "its transaction modes (ISOLATION LEVEL SERIALIZABLE) are kept" in result["notes"][0]
    dsn = module_run.dsns["transaction_modes"]
    assert scalar(dsn, "SELECT priority FROM tasks WHERE id = 2") == 3


def test_a_rerun_of_a_precise_fix_changes_nothing(module_run: ModuleRun) -> None:
    first, second = module_run["rerun_first"], module_run["rerun_second"]
    assert first["committed"] is True and first["changed"] is True
    assert first["rows_affected"] == scalar(
        module_run.dsns["args"], "SELECT count(*) FROM users WHERE plan = 'team'"
    )  # the untouched copy of the same data
    assert second["committed"] is True and second["changed"] is False
    assert second["rows_affected"] == 0
    # min_rows turns the silent no-op into a failure
    third = module_run["rerun_min_rows"]
    assert third["failed"] is True and third["failed_check"] == "min_rows"
    assert "the fix affected 0 rows, fewer than min_rows 1" in third["reason"]


def test_the_fix_does_not_wait_for_readers(module_run: ModuleRun) -> None:
    """A reader in another session does not block the fix, and keeps its snapshot."""
    result = module_run["readers"]
    assert result["failed"] is False and result["committed"] is True, result["reason"]
    teams = module_run.seen["reader_before"]
    assert teams > 0 and result["rows_affected"] == teams
    assert module_run.seen["reader_after"] == teams  # the reader still saw the old data
    dsn = module_run.dsns["readers"]
    assert scalar(dsn, "SELECT count(*) FROM users WHERE plan = 'team'") == 0


def test_a_begin_atomic_function_body_runs_as_one_statement(module_run: ModuleRun) -> None:
    result = module_run["begin_atomic"]
    assert result["failed"] is False and result["committed"] is True, result["reason"]
    assert [s["command"] for s in result["statements"]] == ["CREATE FUNCTION", "UPDATE"]
    assert result["rows_affected"] == 1
    assert scalar(module_run.dsns["begin_atomic"], "SELECT dfx_lowered(3)") == 2


def test_argument_checks_refuse_before_anything_runs(module_run: ModuleRun) -> None:
    assert module_run["args_exclusive"]["msg"] == "parameters are mutually exclusive: path|content"
    assert module_run["args_type"]["msg"].startswith(
        "argument 'max_rows' is of type str and we were unable to convert to int"
    )
    assert module_run["args_ranges"]["msg"] == (
        "pg_datafix: invalid input: max_rows must be >= 0, got -1; "
        "verify_show_rows must be >= 0, got -1; nothing was run"
    )
    assert all(module_run[key]["failed"] for key in ("args_exclusive", "args_type", "args_ranges"))
    assert module_run.unchanged("args")


def test_the_password_never_shows(module_run: ModuleRun, pg: PostgresCluster) -> None:
    # The verify query returned a row holding the password: the module masks it (the DSN's
    # password is a no_log value), in the result and in the report Ansible prints.
    result = module_run["masked"]
    assert result["failed_check"] == "verify"
    # a value that IS the password is replaced whole, one that holds it has it starred out
    assert result["verify"]["rows"] == [["db_password", "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"]]
    assert result["reason"].endswith("first: (key=db_password, value=********)")
    assert "  (key=db_password, value=********)" in result["report_lines"]
    assert module_run.unchanged("masked")
    # dsn is a no_log option: at -vvv every task's arguments are shown, the DSN never
    masked_dsn = '"dsn": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"'
    assert module_run.output.count(masked_dsn) == len(CASES)
    assert "(key=db_password, value=********)" in module_run.output
    assert pg.password not in module_run.output
    # nor anywhere on disk: the playbook, the saved results, the operation log
    files = sorted(p for p in module_run.work.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"pg_datafix-cases.yml", "results.json", "oplog.jsonl"}
    assert [p.name for p in files if pg.password in p.read_text()] == []
