"""PostgreSQL dying under the runbooks: restore.yml and db_migrate.yml with the server killed
(SIGKILL of the postmaster and its backends: the lab's ``pg.kill()``) at their worst moment,
then started again (crash recovery: ``pg.start()``).

restore.yml, in place of the app's database (maintenance mode on the app hosts) and into a new
database, with the server killed while pg_restore copies the data: afterwards the target is as
it was (or was never created), the app hosts are out of maintenance mode and serving, and the
failure says that the server went away and what it left: the half-restored scratch database,
marked as opsbook's, which the next restore drops. db_migrate.yml with the server killed during
a migration: nothing of it is recorded as applied, and the next run applies it.

The restore source is tiny but slow to restore: its table's CHECK constraint calls a function
that sleeps, so pg_restore's COPY runs for seconds on 120 rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import AppHost, PostgresCluster
from tests.integration.faults import Injector
from tests.integration.stats_helper import run_with_stats
from tests.lab import app_table_checksums

pytestmark = pytest.mark.integration

ROWS = 120
SLEEP_S = 0.025  # per row in pg_restore's COPY: about 3 s of restore


def crash(pg: PostgresCluster) -> None:
    """SIGKILL the server - once what it committed is on disk, as a real server's commits are.

    The lab runs with synchronous_commit off (speed): a crash would also lose the last
    commits (a migration's record, the scratch database's marker), which no production
    server does. One synchronous commit of a transaction that wrote WAL (a bare xid's does
    not wait) writes out every commit before it; then the kill.
    """
    with pg.connect() as conn:
        conn.execute("SET synchronous_commit = on")
        conn.execute("SELECT pg_logical_emit_message(true, 'opsbook-test', 'crash')")
    pg.kill()


# ----------------------------------------------------------------- the slow source


@pytest.fixture(scope="module")
def slow_db(pg: PostgresCluster) -> Iterator[str]:
    """A database whose restore takes seconds: each row's CHECK sleeps (only in a restore:
    the rows are inserted while the function is still quick)."""
    name = f"flt_{uuid.uuid4().hex[:6]}"
    pg.create_database(name)
    pg.execute(
        "CREATE FUNCTION public.row_ok(id int) RETURNS boolean LANGUAGE sql IMMUTABLE "
        "AS 'SELECT true';"
        "CREATE TABLE public.items (id int PRIMARY KEY, body text NOT NULL, "
        "CHECK (public.row_ok(id)));"
        f"INSERT INTO public.items SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g;"
        "CREATE OR REPLACE FUNCTION public.row_ok(id int) RETURNS boolean LANGUAGE plpgsql "
        f"IMMUTABLE AS $$ BEGIN PERFORM pg_catalog.pg_sleep({SLEEP_S}); RETURN true; END $$;",
        dbname=name,
    )
    yield name
    for database in [name, *scratch_of(pg, name)]:
        pg.drop_database(database)


@pytest.fixture(scope="module")
def backups(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-backups")


@pytest.fixture
def inventory(make_inventory: Any, pg: PostgresCluster, slow_db: str, backups: Path) -> Path:
    """The app's database is slow_db (a replace of it puts the app hosts in maintenance)."""
    return make_inventory(
        env="faults", database_url=pg.dsn_for(slow_db), backup_storage_url=f"file://{backups}"
    )


@pytest.fixture
def backed_up(run_playbook: Any, inventory: Path, backups: Path) -> Path:
    """slow_db backed up once (a restore test makes sure the backup is there)."""
    if not any(backups.rglob("manifest.json")):
        proc = run_playbook("backup", inventory)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return inventory


def copying_into_scratch(pg: PostgresCluster, target: str) -> bool:
    rows = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s AND query LIKE 'COPY %%'",
        params=(target + "__opsbook_restore_%",),
    )
    return int(rows[0][0]) > 0


def scratch_of(pg: PostgresCluster, target: str) -> list[str]:
    rows = pg.execute(
        "SELECT datname FROM pg_database WHERE datname LIKE %s",
        params=(target + "__opsbook_restore_%",),
    )
    return [row[0] for row in rows]


def database_state(pg: PostgresCluster, name: str) -> dict[str, Any]:
    (row,) = pg.execute(
        "SELECT datallowconn, shobj_description(oid, 'pg_database') FROM pg_database "
        "WHERE datname = %s",
        params=(name,),
    )
    return {
        "allow_connections": row[0],
        "comment": row[1],
        "items": app_table_checksums(pg.dsn_for(name), ("items",)),
    }


# ----------------------------------------------------------------- restores


def assert_says_the_server_went_away(output: str, scratch: str) -> None:
    assert (
        "the database server went away during the restore (it no longer accepts connections: "
        'connection to server at "127.0.0.1"' in output
    )
    assert 'COPY failed for table "items": server closed the connection unexpectedly' in output
    assert (
        f"the half-restored database '{scratch}' could not be dropped (the server is gone); it "
        "is marked as opsbook's scratch work: the next restore drops it once no session uses it "
        "and it is 60 minutes old (stale_after_minutes)" in output
    )


def test_server_killed_mid_restore_in_place_leaves_the_database_and_the_app_serving(
    pg: PostgresCluster,
    slow_db: str,
    backed_up: Path,
    app_hosts: list[AppHost],
    run_playbook: Any,
    tmp_path: Path,
) -> None:
    before = database_state(pg, slow_db)
    killer = Injector(lambda: copying_into_scratch(pg, slow_db), lambda: crash(pg))
    with killer:
        run = run_with_stats(
            run_playbook, tmp_path, "restore", backed_up,
            extravars={"restore_mode": "replace", "confirm": slow_db},
        )  # fmt: skip
    killer.check(run.output)
    pg.start()
    assert run.rc != 0
    # the database the app uses is exactly as it was: content, comment, connections allowed
    assert database_state(pg, slow_db) == before
    # maintenance mode was switched on, and off again whatever happened: every host serves
    names = [h.name for h in app_hosts]
    report = run.stats["restore"]
    assert sorted(report["maintenance"]["switched_on"]) == names
    assert sorted(report["maintenance"]["switched_off"]) == names
    assert report["maintenance"]["left_on"] == []
    for host in app_hosts:
        assert host.health().status == 200
        assert not (host.shared_dir / "maintenance").exists()
    (scratch,) = scratch_of(pg, slow_db)  # half-restored, marked: the next restore drops it
    assert_says_the_server_went_away(run.output, scratch)
    assert (
        f"the target database '{slow_db}' is unchanged (the previous good state is in place)"
        in run.output
    )
    assert f"Maintenance mode was switched off again on {', '.join(names)}." in run.output


def test_server_killed_mid_restore_into_a_new_database_creates_nothing(
    pg: PostgresCluster,
    backed_up: Path,
    run_playbook: Any,
    tmp_path: Path,
) -> None:
    target = f"flt_new_{uuid.uuid4().hex[:6]}"
    killer = Injector(lambda: copying_into_scratch(pg, target), lambda: crash(pg))
    with killer:
        run = run_with_stats(
            run_playbook, tmp_path, "restore", backed_up,
            extravars={"restore_target_database": target},
        )  # fmt: skip
    killer.check(run.output)
    pg.start()
    assert run.rc != 0
    assert not pg.database_exists(target)
    (scratch,) = scratch_of(pg, target)
    assert_says_the_server_went_away(run.output, scratch)
    assert f"the target database '{target}' was not created" in run.output
    # the next restore (its scratch databases stale at once) drops it, and restores
    again = run_with_stats(
        run_playbook, tmp_path, "restore", backed_up,
        extravars={"restore_target_database": target, "pg_restore_stale_after_minutes": 0},
    )  # fmt: skip
    assert again.rc == 0, again.output
    assert scratch in again.stats["restore"]["summary"]
    assert scratch_of(pg, target) == []
    assert pg.execute("SELECT count(*) FROM items", dbname=target) == [(ROWS,)]
    pg.drop_database(target)


# ----------------------------------------------------------------- migrations


@pytest.fixture
def migrate_db(pg: PostgresCluster) -> Iterator[str]:
    name = f"flt_mig_{uuid.uuid4().hex[:6]}"
    pg.create_database(name)
    # how long migration 002 sleeps: the test's knob, outside the migrations
    pg.execute(
        "CREATE TABLE fault_knob (sleep_s float NOT NULL); INSERT INTO fault_knob VALUES (60)",
        dbname=name,
    )
    yield name
    pg.drop_database(name)


def migrations(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "migration-001-create.sql").write_text("CREATE TABLE widgets (id int);\n")
    (directory / "migration-002-name.sql").write_text(
        "ALTER TABLE widgets ADD COLUMN name text;\nSELECT pg_sleep(sleep_s) FROM fault_knob;\n"
    )
    return directory


def applied(pg: PostgresCluster, db: str) -> list[tuple[int, str]]:
    rows = pg.execute("SELECT version, status FROM opsbook.schema_migrations ORDER BY 1", dbname=db)
    return [(int(r[0]), str(r[1])) for r in rows]


def columns(pg: PostgresCluster, db: str) -> list[str]:
    return [r[0] for r in pg.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'widgets' "
        "ORDER BY ordinal_position", dbname=db)]  # fmt: skip


def sleeping_in(pg: PostgresCluster, db: str) -> bool:
    rows = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                      "AND query LIKE %s", params=(db, "%pg_sleep%"))  # fmt: skip
    return int(rows[0][0]) > 0


def test_server_killed_mid_migration_records_nothing_half_applied_and_the_next_run_applies_it(
    pg: PostgresCluster,
    migrate_db: str,
    make_inventory: Any,
    run_playbook: Any,
    tmp_path: Path,
) -> None:
    inventory = make_inventory(env="faults", app_hosts=[], database_url=pg.dsn_for(migrate_db))
    extra = {"migrations_dir": str(migrations(tmp_path))}
    killer = Injector(lambda: sleeping_in(pg, migrate_db), lambda: crash(pg))
    with killer:
        run = run_with_stats(run_playbook, tmp_path, "db_migrate", inventory, extravars=extra)
    killer.check(run.output)
    pg.start()
    assert run.rc != 0
    # 001 committed and recorded; 002 neither applied nor recorded (not even as failed)
    assert applied(pg, migrate_db) == [(1, "applied")]
    assert columns(pg, migrate_db) == ["id"]
    assert (
        "the connection to the database server was lost (consuming input failed: server closed "
        "the connection unexpectedly" in run.output
    )
    assert (
        "during migration migration-002-name.sql: it was never committed: nothing of it is "
        "applied or recorded (one transaction), and the next run runs it again; done before it "
        "in this run (committed): 1; the advisory lock went with the session" in run.output
    )
    pg.execute("UPDATE fault_knob SET sleep_s = 0", dbname=migrate_db)
    again = run_with_stats(run_playbook, tmp_path, "db_migrate", inventory, extravars=extra)
    assert again.rc == 0, again.output
    assert [m["name"] for m in again.stats["db_migrate"]["applied"]] == ["migration-002-name"]
    assert applied(pg, migrate_db) == [(1, "applied"), (2, "applied")]
    assert columns(pg, migrate_db) == ["id", "name"]
