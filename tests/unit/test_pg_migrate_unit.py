"""library/pg_migrate.py, the pure parts: the no-transaction marker and the statements that
need it, checksums (Prisma's comparison included), scanning both layouts, ordering, the
analysis of disk against history."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from tests.loaders import PROJECT_ROOT, load_library

pgm = load_library("pg_migrate")

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return directory


# Splitting a script into statements is module_utils/opsbook_sql.py's (tests/unit/test_sql.py).


# ------------------------------------------------------------------ transaction mode


@pytest.mark.parametrize(
    "header",
    [
        "-- opsbook: no-transaction\n",
        "-- Migration 7\n--   OPSBOOK:   No-Transaction\n",
        "\n\n-- opsbook:no-transaction\n-- more words\n",
    ],
)
def test_marker_in_the_header(header: str) -> None:
    sql = header + "CREATE INDEX i ON t (x);\n"
    assert pgm.has_no_transaction_marker(sql)
    assert pgm.transaction_mode(sql, pgm.split_sql(sql)) == (
        False,
        "marked `-- opsbook: no-transaction`",
    )


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX i ON t (x);\n-- opsbook: no-transaction\n",  # after the first statement
        "-- opsbook: no-transaction please\nCREATE INDEX i ON t (x);",  # not the exact marker
        "/* opsbook: no-transaction */\nCREATE INDEX i ON t (x);",  # block comments do not count
    ],
)
def test_marker_elsewhere_is_not_a_marker(sql: str) -> None:
    assert not pgm.has_no_transaction_marker(sql)
    assert pgm.transaction_mode(sql, pgm.split_sql(sql)) == (True, None)


@pytest.mark.parametrize(
    ("sql", "what", "line"),
    [
        ("CREATE INDEX CONCURRENTLY i ON t (x);", "CREATE INDEX CONCURRENTLY", 1),
        (
            "SELECT 1;\n\ncreate unique index\n concurrently i on t (x);",
            "CREATE INDEX CONCURRENTLY",
            3,
        ),
        ("DROP INDEX CONCURRENTLY IF EXISTS i;", "DROP INDEX CONCURRENTLY", 1),
        ("REINDEX (VERBOSE) INDEX CONCURRENTLY i;", "REINDEX CONCURRENTLY", 1),
        ("ALTER TYPE mood ADD VALUE 'meh';", "ALTER TYPE ... ADD VALUE", 1),
        ("ALTER TYPE \"Role\" ADD VALUE IF NOT EXISTS 'OWNER' AFTER 'ADMIN';", "ADD VALUE", 1),
        ("VACUUM ANALYZE t;", "VACUUM", 1),
        ("ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY;", "DETACH PARTITION", 1),
        ("ALTER SYSTEM SET work_mem = '8MB';", "ALTER SYSTEM", 1),
    ],
)
def test_detects_statements_that_need_no_transaction(sql: str, what: str, line: int) -> None:
    transactional, note = pgm.transaction_mode(sql, pgm.split_sql(sql))
    assert transactional is False
    assert what in note
    assert f"(line {line})" in note


@pytest.mark.parametrize("control", ["BEGIN;", "START TRANSACTION;", "COMMIT;", "END;", "ABORT;"])
def test_files_with_their_own_transactions_run_as_written(control: str) -> None:
    sql = f"{control}\nUPDATE t SET x = 1;\n"
    transactional, note = pgm.transaction_mode(sql, pgm.split_sql(sql))
    assert transactional is False
    assert "manages its own transactions" in note


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE INDEX i ON t (x);",
        "INSERT INTO notes VALUES ('CREATE INDEX CONCURRENTLY i ON t (x)');",
        "DO $$ BEGIN EXECUTE 'VACUUM'; COMMIT; END $$;",
        "-- CREATE INDEX CONCURRENTLY i ON t (x);\nSELECT 1;",
        "SAVEPOINT s; ROLLBACK TO SAVEPOINT s; RELEASE SAVEPOINT s;",
        "CREATE TABLE vacuum_log (id int);",
    ],
)
def test_transactional_statements(sql: str) -> None:
    assert pgm.transaction_mode(sql, pgm.split_sql(sql)) == (True, None)


# ------------------------------------------------------------------ checksums


def test_checksum_is_sha256_hex_of_the_bytes(tmp_path: Path) -> None:
    data = b'-- CreateTable\r\nCREATE TABLE "A" (id int);\n'
    path = tmp_path / "m.sql"
    path.write_bytes(data)
    script = pgm.load_script(path)
    assert script.checksum == hashlib.sha256(data).hexdigest()
    assert len(script.checksum) == 64


def test_prisma_checksum_matches_like_prisma() -> None:
    lf = b"CREATE TABLE a (id int);\nSELECT 1;\n"
    crlf = lf.replace(b"\n", b"\r\n")
    # Prisma's own test vector (schema-connector/src/checksum.rs)
    assert (
        hashlib.sha256(b"hello").hexdigest()
        == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )
    for script in (lf, crlf):
        for other in (lf, crlf):
            assert pgm.prisma_checksum_matches(script, hashlib.sha256(other).hexdigest())
    assert not pgm.prisma_checksum_matches(b"abc", hashlib.sha256(b"abcd").hexdigest())
    assert not pgm.prisma_checksum_matches(b"abc\n", hashlib.sha256(b"abc").hexdigest())


def test_prisma_checksum_old_unpadded_format() -> None:
    # prisma-engines#1887: old checksums were formatted without zero padding
    script = next(
        s
        for s in (f"SELECT {i};".encode() for i in range(1000))
        if 0 in hashlib.sha256(s).digest() or any(b < 16 for b in hashlib.sha256(s).digest())
    )
    old = "".join(f"{b:x}" for b in hashlib.sha256(script).digest())
    assert len(old) < 64
    assert pgm.prisma_checksum_matches(script, old)
    assert not pgm.prisma_checksum_matches(script + b" ", old)


def test_numbered_checksum_is_exact() -> None:
    script = pgm.Script(Path("m.sql"), b"SELECT 1;\r\n", "SELECT 1;\r\n", [], True, None)
    recorded_lf = hashlib.sha256(b"SELECT 1;\n").hexdigest()
    assert not pgm.checksum_matches(pgm.NUMBERED, script, recorded_lf)
    assert pgm.checksum_matches(pgm.PRISMA, script, recorded_lf)


def test_load_script_rejects_non_utf8_and_strips_bom(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sql"
    bad.write_bytes(b"SELECT '\xff';")
    with pytest.raises(pgm.MigrateError, match="not UTF-8"):
        pgm.load_script(bad)
    bom = tmp_path / "bom.sql"
    bom.write_bytes(b"\xef\xbb\xbf-- opsbook: no-transaction\nSELECT 1;")
    script = pgm.load_script(bom)
    assert script.text.startswith("--")
    assert script.checksum == hashlib.sha256(bom.read_bytes()).hexdigest()
    assert script.transactional is False


# ------------------------------------------------------------------ scanning directories


def test_scan_numbered_orders_by_number_and_pairs_downs(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "migration-10-ten.sql": "SELECT 10;",
            "migration-002-two.sql": "SELECT 2;",
            "migration-002-two.down.sql": "SELECT -2;",
            "migration-1-one.sql": "SELECT 1;",
            "data-fix-2024-05-01-emails.sql": "UPDATE users SET email = lower(email);",
            "migration-3.sql": "SELECT 3;",
            "README.md": "notes",
        },
    )
    migrations, warnings = pgm.scan_numbered(tmp_path)
    assert [m.key for m in migrations] == [1, 2, 10]
    assert [m.name for m in migrations] == [
        "migration-1-one",
        "migration-002-two",
        "migration-10-ten",
    ]
    assert migrations[1].down is not None and migrations[1].down.text == "SELECT -2;"
    assert migrations[0].down is None
    assert warnings == [
        "migration-3.sql is ignored: a migration is named migration-NNN-description.sql"
    ]


@pytest.mark.parametrize(
    ("files", "error"),
    [
        ({"migration-001-a.sql": "", "migration-1-b.sql": ""}, "version 1 is used twice"),
        ({"migration-002-a.down.sql": ""}, "has no up migration"),
        (
            {"migration-002-a.sql": "", "migration-002-b.down.sql": ""},
            "does not match its up migration migration-002-a.sql",
        ),
    ],
)
def test_scan_numbered_errors(tmp_path: Path, files: dict[str, str], error: str) -> None:
    write(tmp_path, files)
    with pytest.raises(pgm.MigrateError, match=error):
        pgm.scan_numbered(tmp_path)


def test_scan_prisma_orders_by_folder_name(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "migration_lock.toml": 'provider = "postgresql"\n',
            "20240601120000_b/migration.sql": "SELECT 2;",
            "0_init/migration.sql": "SELECT 0;",
            "20240101000000_a/migration.sql": "SELECT 1;",
        },
    )
    migrations, _ = pgm.scan_prisma(tmp_path)
    assert [m.key for m in migrations] == ["0_init", "20240101000000_a", "20240601120000_b"]
    assert migrations[0].up.label == "0_init/migration.sql"
    (tmp_path / "20240701000000_empty").mkdir()
    with pytest.raises(pgm.MigrateError, match=r"20240701000000_empty/ has no migration\.sql"):
        pgm.scan_prisma(tmp_path)


def test_detect_layout(tmp_path: Path) -> None:
    numbered = write(tmp_path / "n", {"migration-001-a.sql": "SELECT 1;"})
    prisma = write(tmp_path / "p", {"0_init/migration.sql": "SELECT 1;"})
    both = write(tmp_path / "b", {"migration-001-a.sql": "", "0_init/migration.sql": ""})
    (tmp_path / "e").mkdir()
    assert pgm.detect_layout(numbered) == "numbered"
    assert pgm.detect_layout(prisma) == "prisma"
    with pytest.raises(pgm.MigrateError, match="holds both"):
        pgm.detect_layout(both)
    with pytest.raises(pgm.MigrateError, match="no migrations found"):
        pgm.detect_layout(tmp_path / "e")
    layout, migrations, _ = pgm.load_migrations(tmp_path / "e", "numbered")
    assert (layout, migrations) == ("numbered", [])
    with pytest.raises(pgm.MigrateError, match="is not a directory"):
        pgm.load_migrations(tmp_path / "nope", "auto")


def test_example_migrations_parse() -> None:
    examples = PROJECT_ROOT / "examples" / "migrations"
    layout, numbered, warnings = pgm.load_migrations(examples / "numbered", "auto")
    assert layout == "numbered" and not warnings
    assert [m.key for m in numbered] == [1, 2, 3, 4]
    assert all(m.down is not None for m in numbered)
    assert [m.up.transactional for m in numbered] == [True, True, False, True]
    layout, prisma, _ = pgm.load_migrations(examples / "prisma", "auto")
    assert layout == "prisma"
    assert prisma[0].key == "0_init"
    assert [m.up.transactional for m in prisma] == [True, True, True, False]  # ADD VALUE


# ------------------------------------------------------------------ analysis


def migration(key: Any, sql: str = "SELECT 1;", down: str | None = None) -> Any:
    name = key if isinstance(key, str) else f"migration-{key:03d}-m{key}"
    script = pgm.Script(
        Path(f"{name}.sql"), sql.encode(), sql, pgm.split_sql(sql), True, None
    )
    down_script = None
    if down is not None:
        down_script = pgm.Script(
            Path(f"{name}.down.sql"), down.encode(), down, pgm.split_sql(down), True, None
        )
    return pgm.Migration(key, name, script, down_script)


def record(m: Any, status: str = "applied", checksum: str | None = None) -> Any:
    return pgm.Record(
        key=m.key,
        name=m.name,
        checksum=checksum or m.up.checksum,
        status=status,
        started_at=T0,
        applied_at=T0 if status == "applied" else None,
    )


def test_analyze_numbered() -> None:
    m1, m2, m3, m4, m5 = (migration(i) for i in range(1, 6))
    gone = migration(9)
    records = {
        1: record(m1),
        2: record(m2, checksum="0" * 64),
        3: record(m3, "reverted"),
        5: record(m5, "failed"),
        9: record(gone),
    }
    analysis = pgm.analyze("numbered", [m1, m2, m3, m4, m5], records)
    assert [m.key for m in analysis.applied] == [1, 2]
    assert [m.key for m in analysis.pending] == [3, 4]
    assert [d["version"] for d in analysis.drift] == [2]
    assert [r.key for r in analysis.failed] == [5]
    assert [r.key for r in analysis.missing] == [9]
    assert analysis.current == 9
    assert [m.key for m in analysis.out_of_order] == [3, 4]
    problems = analysis.problems()
    assert len(problems) == 3
    assert "migration-005-m5 failed" in problems[0]
    assert "changed after it was applied" in problems[1]
    assert "older than the current version 9" in problems[2]
    assert len(analysis.problems(allow_out_of_order=True)) == 2
    states = {row["version"]: row["state"] for row in pgm.migration_table(analysis)}
    assert states == {
        1: "applied",
        2: "drift",
        3: "reverted",
        4: "pending",
        5: "failed",
        9: "missing",
    }


def test_select_pending_target_and_out_of_order() -> None:
    ms = [migration(i) for i in (1, 2, 3, 4)]
    analysis = pgm.analyze("numbered", ms, {3: record(ms[2])})
    assert [m.key for m in pgm.select_pending(analysis, None, False)] == [4]
    assert [m.key for m in pgm.select_pending(analysis, None, True)] == [1, 2, 4]
    assert [m.key for m in pgm.select_pending(analysis, 2, True)] == [1, 2]
    fresh = pgm.analyze("numbered", ms, {})
    assert [m.key for m in pgm.select_pending(fresh, 3, False)] == [1, 2, 3]
    assert fresh.current is None


def test_select_down_newest_first() -> None:
    ms = [migration(i, down="SELECT 0;") for i in (1, 2, 3, 4)]
    records = {m.key: record(m) for m in ms}
    records[4] = record(ms[3], "reverted")
    analysis = pgm.analyze("numbered", ms, records)
    assert [(m.key, r.key) for m, r in pgm.select_down(analysis, 1)] == [(3, 3), (2, 2)]
    assert pgm.select_down(analysis, 3) == []
    assert [r.key for _, r in pgm.select_down(analysis, 0)] == [3, 2, 1]


def prisma_row(
    name: str, minutes: int, finished: bool = True, rolled_back: bool = False
) -> dict[str, Any]:
    started = T0 + timedelta(minutes=minutes)
    return {
        "id": f"id-{name}-{minutes}",
        "checksum": hashlib.sha256(b"SELECT 1;").hexdigest(),
        "finished_at": started + timedelta(seconds=2) if finished else None,
        "migration_name": name,
        "logs": None if finished else "boom",
        "rolled_back_at": started + timedelta(minutes=1) if rolled_back else None,
        "started_at": started,
        "applied_steps_count": 1 if finished else 0,
    }


def test_prisma_records_effective_row() -> None:
    rows = [
        prisma_row("a", 0),
        prisma_row("b", 1, finished=False, rolled_back=True),  # failed, resolved rolled back
        prisma_row("b", 5),  # then applied
        prisma_row("c", 6, finished=False),  # failed
        prisma_row("d", 7, finished=False, rolled_back=True),  # rolled back only
    ]
    records = pgm.prisma_records(rows)
    assert {k: r.status for k, r in records.items()} == {
        "a": "applied",
        "b": "applied",
        "c": "failed",
        "d": "rolled_back",
    }
    assert records["a"].execution_ms == 2000
    assert records["c"].error == "boom" and records["c"].ids == ["id-c-6"]
    ms = [migration(n) for n in ("a", "b", "c", "d", "e")]
    analysis = pgm.analyze("prisma", ms, records)
    assert [m.key for m in analysis.pending] == ["d", "e"]
    assert analysis.current == "b"
    assert analysis.out_of_order == []  # Prisma applies them, as prisma migrate deploy does


def test_parse_target() -> None:
    assert pgm.parse_target("numbered", "003", "target") == 3
    assert pgm.parse_target("numbered", "migration-012-x", "target") == 12
    assert pgm.parse_target("numbered", "migration-012-x.sql", "target") == 12
    assert pgm.parse_target("numbered", " ", "target") is None
    assert pgm.parse_target("prisma", "0_init", "migration") == "0_init"
    with pytest.raises(pgm.MigrateError, match="is not a version"):
        pgm.parse_target("numbered", "latest", "target")


def test_strip_prisma_params() -> None:
    dsn = "postgresql://u:p%40ss@db:5432/app?schema=tenant_1&sslmode=require&connection_limit=5"
    assert pgm.strip_prisma_params(dsn) == (
        "postgresql://u:p%40ss@db:5432/app?sslmode=require",
        "tenant_1",
    )
    assert pgm.strip_prisma_params("postgresql://db/app?schema=public") == (
        "postgresql://db/app",
        "public",
    )
    assert pgm.strip_prisma_params("host=db dbname=app") == ("host=db dbname=app", None)
    assert pgm.strip_prisma_params("postgres://db/app") == ("postgres://db/app", None)


def test_prisma_ddl_is_prismas() -> None:
    # prisma-engines sql-schema-connector/src/flavour/postgres.rs create_migrations_table
    ddl = pgm.prisma_ddl("public")
    columns = [line.split()[:2] for line in ddl.splitlines()[1:-1]]
    assert columns == [
        ["id", "VARCHAR(36)"],
        ["checksum", "VARCHAR(64)"],
        ["finished_at", "TIMESTAMPTZ,"],
        ["migration_name", "VARCHAR(255)"],
        ["logs", "TEXT,"],
        ["rolled_back_at", "TIMESTAMPTZ,"],
        ["started_at", "TIMESTAMPTZ"],
        ["applied_steps_count", "INTEGER"],
    ]
    assert 'CREATE TABLE "public"._prisma_migrations' in ddl
    assert "PRIMARY KEY NOT NULL" in ddl and "DEFAULT now()" in ddl and "DEFAULT 0" in ddl
    assert pgm.PRISMA_LOCK_KEY == 72707369


def base_params(**overrides: Any) -> dict[str, Any]:
    params = {name: spec.get("default") for name, spec in pgm.argument_spec().items()}
    params.update(dsn="postgresql://db/app", migrations_dir="/m")
    params.update(overrides)
    return params


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"action": "down"}, "action is down but all of the following are missing: target"),
        (
            {"action": "resolve"},
            "action is resolve but all of the following are missing: migration, resolve_as",
        ),
        (
            {"action": "resolve", "migration": "3"},
            "action is resolve but all of the following are missing: resolve_as",
        ),
        ({"action": "down", "target": "0"}, None),
        ({"action": "apply"}, None),
    ],
)
def test_what_an_action_needs_is_in_the_argument_spec(args: dict[str, Any], error: Any) -> None:
    """AnsibleModule applies ARGUMENT_RULES (main() passes them) before validate_params runs."""
    checked = ArgumentSpecValidator(pgm.argument_spec(), **pgm.ARGUMENT_RULES).validate(
        {"dsn": "postgresql://db/app", "migrations_dir": "/m", **args}
    )
    assert [str(m) for m in checked.error_messages] == ([error] if error else [])


def test_validate_params() -> None:
    assert pgm.validate_params(base_params()) == []
    assert pgm.validate_params(base_params(action="down")) == [
        "action=down needs target: the version to go back to (0 reverts all)"
    ]
    assert pgm.validate_params(base_params(action="resolve", resolve_as="applied")) == [
        "action=resolve needs migration: the migration to resolve"
    ]
    assert pgm.validate_params(base_params(lock_timeout_s=-1)) == [
        "lock_timeout_s must be >= 0, got -1"
    ]
    assert "lock_key must be a bigint" in pgm.validate_params(base_params(lock_key=2**64))[0]


