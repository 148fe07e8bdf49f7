"""What the modules say when the database server goes away mid-run - the branches the fault
tests (tests/integration/test_faults_pg.py) cannot time: a migration whose connection broke at
its COMMIT, one outside a transaction, a restore whose scratch database was not yet marked.
Python-level stand-ins for the connection only; the messages are the modules' own."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from tests.loaders import load_library, load_module_utils

pgm = load_library("pg_migrate")
pgr = load_library("pg_restore")
pg_utils = load_module_utils("opsbook_pg")
module_utils = load_module_utils("opsbook_module")

DSN = "postgresql://app:s3cret@db.example:5432/app"


# ----------------------------------------------------------------- pg_migrate


def migrate_run(tmp_path: Path) -> Any:
    (tmp_path / "migration-001-a.sql").write_text("CREATE TABLE a (id int);\n")
    (tmp_path / "migration-002-b.sql").write_text(
        "-- opsbook: no-transaction\nCREATE INDEX CONCURRENTLY b ON a (id);\n"
    )
    checked = ArgumentSpecValidator(pgm.argument_spec()).validate(
        {"dsn": DSN, "migrations_dir": str(tmp_path), "action": "apply"}
    )
    run = pgm.Run(SimpleNamespace(params=checked.validated_parameters, check_mode=False))
    run.migrations, _ = pgm.scan_numbered(tmp_path)
    return run


def lost_connection() -> BaseException:
    """What psycopg raises on a dead server, then the ROLLBACK tried after it."""
    try:
        try:
            raise OSError("server closed the connection unexpectedly\n\tThis probably means...")
        except OSError:
            raise RuntimeError("the connection is closed") from None
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    ("which", "committing", "state"),
    [
        (0, False, "it was never committed: nothing of it is applied or recorded (one "
                   "transaction), and the next run runs it again"),
        (0, True, "the connection broke at its COMMIT: it is either applied and recorded or "
                  "neither (one transaction) - action=status tells which"),
        (1, False, "it runs outside a transaction: its statements up to the loss stay applied "
                   "and it is recorded as running - look at the database, then action=resolve"),
    ],
)  # fmt: skip
def test_a_lost_connection_says_what_the_migration_it_ran_is_left_as(
    tmp_path: Path, which: int, committing: bool, state: str
) -> None:
    run = migrate_run(tmp_path)
    run.m.conn = SimpleNamespace(broken=True)
    run.m.committing = committing
    migration = run.migrations[which]
    run.running = (migration, migration.up)
    if which == 1:
        run.result["applied"].append({"version": 1})
    done = "done before it in this run (committed): 1" if which == 1 else (
        "nothing was done before it in this run"
    )  # fmt: skip
    assert run.lost_msg(lost_connection()) == (
        "the connection to the database server was lost (server closed the connection "
        f"unexpectedly; This probably means...) during migration {migration.up.label}: "
        f"{state}; {done}; the advisory lock went with the session"
    )


def test_a_live_connection_is_not_a_lost_one(tmp_path: Path) -> None:
    run = migrate_run(tmp_path)
    run.m.conn = SimpleNamespace(broken=False)
    assert run.lost_msg(RuntimeError("syntax error")) is None
    run.m.conn = None  # never connected
    assert run.lost_msg(RuntimeError("no route")) is None


# ----------------------------------------------------------------- pg_restore


def restore_run(marked: bool) -> Any:
    checked = ArgumentSpecValidator(pgr.argument_spec()).validate(
        {"dsn": DSN, "storage_url": "file:///b", "target_database": "app", "mode": "new"}
    )
    run = pgr.RestoreRun(module_utils.RunContext(checked.validated_parameters, False))
    run.state.scratch_created = True
    run.state.scratch_marked = marked

    def refused(*_args: Any, **_kwargs: Any) -> Any:
        raise pg_utils.PgConnectError(
            'connection failed: connection to server at "db.example", port 5432 failed: '
            "Connection refused"
        )

    run.cursor = refused  # the server is gone: nothing connects
    return run


def test_a_restore_whose_server_went_away_says_so_and_what_the_next_restore_drops() -> None:
    run = restore_run(marked=True)
    run.cleanup_failed()
    assert run.state.server_gone == (
        'connection to server at "db.example", port 5432 failed: Connection refused'
    )
    assert run.left_as() == (
        f"the half-restored database {run.scratch!r} could not be dropped (the server is "
        "gone); it is marked as opsbook's scratch work: the next restore drops it once no "
        "session uses it and it is 60 minutes old (stale_after_minutes), or drop it by hand "
        f"(DROP DATABASE \"{run.scratch}\"); the target database 'app' was not created"
    )


def test_an_unmarked_scratch_database_is_for_the_operator_to_drop() -> None:
    run = restore_run(marked=False)  # the server died between CREATE DATABASE and COMMENT
    run.cleanup_failed()
    assert run.left_as().startswith(
        f"the half-restored database {run.scratch!r} could not be dropped (the server is "
        f'gone): drop it by hand (DROP DATABASE "{run.scratch}")'
    )
