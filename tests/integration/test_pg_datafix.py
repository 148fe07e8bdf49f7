"""pg_datafix and playbooks/data_fix.yml against the lab's PostgreSQL.

Every test works in a fresh database of its own (the sample app schema: 200 users, 1000 tasks),
never in database ``app``. "Nothing changed" is checked by comparing the tables' checksums
(row count + md5 of every row) before and after. The playbook runs read their set_stats data
(key data_fix) through tests/integration/stats_helper.py; the other cases call the module's code
directly with a real connection (no Ansible in between, faster).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opsbook.lab import PostgresCluster, app_table_checksums, load_app_schema
from tests.integration.stats_helper import run_with_stats
from tests.loaders import load_library

pytestmark = pytest.mark.integration

dfx = load_library("pg_datafix")

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


class FakeModule:
    """What run_module needs of an AnsibleModule."""

    def __init__(self, params: dict[str, Any], check_mode: bool) -> None:
        self.params = params
        self.check_mode = check_mode
        self.no_log_values: set[str] = set()


def run_fix(dsn: str, content: str, check_mode: bool = False, **overrides: Any) -> dict[str, Any]:
    params = {k: v.get("default") for k, v in dfx.argument_spec().items()}
    params.update(dsn=dsn, content=content, name="data-fix-2025-10-01-test.sql", **overrides)
    result, _warnings = dfx.run_module(FakeModule(params, check_mode))
    json.dumps(result)  # the result must be JSON-serializable, as Ansible needs it
    return result


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
    assert "refused before anything ran: statement 2 (line 2) is COMMIT" in run.stdout
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


# ----------------------------------------------------------------- the module's code, directly


def test_a_failing_statement_undoes_the_statements_before_it(app_db: tuple[str, str]) -> None:
    _name, dsn = app_db
    before = app_table_checksums(dsn)
    result = run_fix(
        dsn,
        "UPDATE users SET plan = 'pro' WHERE plan = 'free';\n"
        "UPDATE users SET plan = 'enterprise' WHERE id = 1;\n",  # violates the CHECK constraint
        verify="SELECT 1 WHERE false",
    )
    assert result["failed_check"] == "statement_error" and result["outcome"] == "rolled_back"
    assert result["statements"][0]["rows"] > 0
    assert (
        "statement 2 (line 2) failed" in result["reason"] and "users_plan_check" in result["reason"]
    )
    assert app_table_checksums(dsn) == before


@pytest.mark.parametrize(
    ("bounds", "check"),
    [
        ({"max_rows_per_statement": 10}, "max_rows_per_statement"),
        ({"min_rows_per_statement": 1}, "min_rows_per_statement"),
        ({"min_rows": 10_000}, "min_rows"),
    ],
)
def test_bounds_roll_back(app_db: tuple[str, str], bounds: dict[str, int], check: str) -> None:
    _name, dsn = app_db
    before = app_table_checksums(dsn)
    result = run_fix(
        dsn,
        "UPDATE tasks SET priority = 1 WHERE status = 'todo';\n"
        "UPDATE tasks SET status = 'archived' WHERE false;\n",
        verify="SELECT 1 WHERE false",
        **bounds,
    )
    assert result["failed_check"] == check, result["reason"]
    assert result["outcome"] == "rolled_back"
    assert app_table_checksums(dsn) == before


def test_tables_changed_include_cascades_the_tags_do_not_count(app_db: tuple[str, str]) -> None:
    _name, dsn = app_db
    result = run_fix(
        dsn,
        "DELETE FROM users WHERE id = 1;",
        check_mode=True,
        verify="SELECT id FROM tasks WHERE user_id = 1",
    )
    assert result["would_commit"] is True and result["rows_affected"] == 1
    assert result["tables_changed"] == [
        {"table": "public.tasks", "inserted": 0, "updated": 0, "deleted": 5},
        {"table": "public.users", "inserted": 0, "updated": 0, "deleted": 1},
    ]
    assert scalar(dsn, "SELECT count(*) FROM users WHERE id = 1") == 1


def test_a_deferred_constraint_is_checked_before_the_verify(app_db: tuple[str, str]) -> None:
    _name, dsn = app_db
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE notes (id int PRIMARY KEY, user_id bigint REFERENCES users (id)"
            " DEFERRABLE INITIALLY DEFERRED)"
        )
    result = run_fix(dsn, "INSERT INTO notes VALUES (1, 999999);", verify="SELECT 1 WHERE false")
    assert result["failed_check"] == "constraints"
    assert "notes_user_id_fkey" in result["reason"]
    assert result["verify"]["ran"] is False
    assert scalar(dsn, "SELECT count(*) FROM notes") == 0


def test_the_verify_query_cannot_write(app_db: tuple[str, str]) -> None:
    _name, dsn = app_db
    before = app_table_checksums(dsn)
    result = run_fix(
        dsn,
        "UPDATE tasks SET priority = 2 WHERE id = 1;",
        verify="WITH gone AS (DELETE FROM tasks RETURNING id) SELECT id FROM gone WHERE false",
    )
    assert result["failed_check"] == "verify_error"
    assert "read-only transaction" in result["reason"]
    assert app_table_checksums(dsn) == before


def test_lock_timeout_stops_a_fix_stuck_behind_a_lock(app_db: tuple[str, str]) -> None:
    _name, dsn = app_db
    before = app_table_checksums(dsn)
    holder = psycopg.connect(dsn)
    try:
        holder.execute("UPDATE users SET name = name WHERE id = 7")  # row lock, transaction open
        result = run_fix(
            dsn,
            "UPDATE users SET plan = 'pro' WHERE id = 7;",
            verify="SELECT 1 WHERE false",
            lock_timeout="500ms",
        )
    finally:
        holder.rollback()
        holder.close()
    assert result["failed_check"] == "statement_error"
    assert "lock timeout" in result["reason"]
    assert app_table_checksums(dsn) == before


def test_the_files_transaction_modes_apply(app_db: tuple[str, str]) -> None:
    _name, dsn = app_db
    result = run_fix(
        dsn,
        "BEGIN ISOLATION LEVEL SERIALIZABLE;\n"
        "UPDATE tasks SET priority = 3 WHERE id = 2;\n"
        "COMMIT;\n",
        verify="SELECT 1 WHERE current_setting('transaction_isolation') <> 'serializable'",
        statement_timeout="30s",
    )
    assert result["outcome"] == "committed", result["reason"]
    assert "its transaction modes (ISOLATION LEVEL SERIALIZABLE) are kept" in result["notes"][0]


def test_a_rerun_of_a_precise_fix_changes_nothing(app_db: tuple[str, str]) -> None:
    _name, dsn = app_db
    first = run_fix(dsn, PASSING_FIX, verify=NO_TEAM_LEFT)
    assert first["committed"] is True and first["changed"] is True
    second = run_fix(dsn, PASSING_FIX, verify=NO_TEAM_LEFT)
    assert second["committed"] is True and second["changed"] is False
    assert second["rows_affected"] == 0
    # min_rows turns the silent no-op into a failure
    third = run_fix(dsn, PASSING_FIX, verify=NO_TEAM_LEFT, min_rows=1)
    assert third["failed_check"] == "min_rows"


def test_the_fix_does_not_wait_for_readers(app_db: tuple[str, str]) -> None:
    """A reader in another session does not block the fix, and sees the old data until COMMIT."""
    _name, dsn = app_db
    seen: list[int] = []
    reader = psycopg.connect(dsn)
    reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT count(*) FROM users WHERE plan = 'team'")
    thread = threading.Thread(
        target=lambda: seen.append(run_fix(dsn, PASSING_FIX, verify=NO_TEAM_LEFT)["rows_affected"])
    )
    thread.start()
    thread.join(timeout=30)
    try:
        assert seen and seen[0] > 0
        row = reader.execute("SELECT count(*) FROM users WHERE plan = 'team'").fetchone()
        assert row is not None and row[0] == seen[0]
    finally:
        reader.rollback()
        reader.close()
