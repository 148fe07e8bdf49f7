"""library/pg_restore.py: the pure parts (confirmation rules, names, input validation,
argv, messages), small process pipelines, the documentation against the argument spec.
No server needed."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.loaders import load_library, module_documentation

rst = load_library("pg_restore")

SECRET = "S3cr#t:pw\\42"
QUOTED_SECRET = SECRET.replace("\\", "\\\\").replace("'", "\\'")  # conninfo quoting


def params(**overrides: Any) -> dict[str, Any]:
    values = {k: v.get("default") for k, v in rst.argument_spec().items()}
    values.update(
        dsn=f"host=127.0.0.1 port=5432 dbname=app user=ops password='{QUOTED_SECRET}'",
        storage_url="file:///var/backups/opsbook",
        target_database="app",
    )
    values.update(overrides)
    return values


# ----------------------------------------------------------------- typed confirmation


CONFIRMATIONS = [
    # mode, env, confirm, allowed
    ("new", None, None, True),
    ("new", "staging", None, True),
    ("new", "local", "", True),
    ("new", "staging", "app", True),
    ("new", "staging", "other", False),  # names another database: always refused
    ("new", "production", None, False),  # production: confirm even for new
    ("new", "production", "", False),
    ("new", "Production", None, False),
    ("new", " production ", None, False),
    ("new", "production", "app", True),
    ("new", "production", "APP", False),  # exact, case-sensitive like database names
    ("replace", None, None, False),
    ("replace", "staging", "", False),
    ("replace", "staging", "app ", False),
    ("replace", "staging", "other", False),
    ("replace", "staging", "app", True),
    ("replace", "production", None, False),
    ("replace", "production", "app", True),
]


@pytest.mark.parametrize(("mode", "env", "confirm", "allowed"), CONFIRMATIONS)
def test_confirmation_rules(mode: str, env: str | None, confirm: str | None, allowed: bool) -> None:
    problem = rst.confirmation_problem(mode, env, "app", confirm)
    assert (problem is None) is allowed, problem


def test_confirmation_messages_name_the_target_and_the_reason() -> None:
    text = rst.confirmation_problem("replace", None, "app", None)
    assert "mode=replace" in text and "'app'" in text and "confirm" in text
    text = rst.confirmation_problem("new", "production", "app", None)
    assert "production" in text and "'app'" in text
    text = rst.confirmation_problem("replace", None, "app", "ap")
    assert "'ap'" in text and "does not equal" in text


# ----------------------------------------------------------------- database names


def test_scratch_and_previous_names() -> None:
    assert rst.scratch_database_name("app", "4f2a9c") == "app__opsbook_restore_4f2a9c"
    when = datetime(2024, 5, 1, 12, 30, 5, tzinfo=UTC)
    assert rst.previous_database_name("app", when) == "app__opsbook_old_20240501T123005Z"
    # another offset: the name is always in UTC
    local = when.astimezone(timezone(timedelta(hours=2)))
    assert rst.previous_database_name("app", local) == "app__opsbook_old_20240501T123005Z"


@pytest.mark.parametrize("target", ["a" * 63, "b" * 40, "é" * 31, "x" + "ü" * 30])
def test_names_fit_63_bytes_and_keep_whole_characters(target: str) -> None:
    when = datetime(2024, 5, 1, tzinfo=UTC)
    for name, suffix in (
        (rst.scratch_database_name(target, "abcdef"), "__opsbook_restore_abcdef"),
        (rst.previous_database_name(target, when), "__opsbook_old_20240501T000000Z"),
    ):
        assert len(name.encode("utf-8")) <= 63
        assert name.endswith(suffix)
        prefix = name[: -len(suffix)]
        assert target.startswith(prefix) and prefix  # a whole-character prefix of the target
        prefix.encode("utf-8").decode("utf-8")


def test_leftover_databases() -> None:
    when = datetime(2024, 5, 1, tzinfo=UTC)
    names = [
        "app",
        "app__opsbook_restore_abc123",
        "app__opsbook_old_20240501T000000Z",
        "app2__opsbook_restore_abc123",  # another target
        "app__opsbook_restore_nothex",
        "apps__opsbook_old_20240501T000000Z",
    ]
    assert rst.leftover_databases(names, "app") == {
        "scratch": ["app__opsbook_restore_abc123"],
        "previous": ["app__opsbook_old_20240501T000000Z"],
    }
    long = "l" * 63
    names = [rst.scratch_database_name(long, "0a0b0c"), rst.previous_database_name(long, when)]
    assert rst.leftover_databases(names, long) == {"scratch": names[:1], "previous": names[1:]}
    assert rst.leftover_databases(["a_b__opsbook_restore_abc123"], "a%b") == {
        "scratch": [],
        "previous": [],
    }


def test_truncate_utf8() -> None:
    assert rst.truncate_utf8("abc", 5) == "abc"
    assert rst.truncate_utf8("abcdef", 3) == "abc"
    assert rst.truncate_utf8("aéb", 2) == "a"  # é is 2 bytes: never cut in half
    assert rst.truncate_utf8("aéb", 3) == "aé"


# ----------------------------------------------------------------- input validation


def test_valid_defaults() -> None:
    assert rst.validate_params(params()) == []
    assert rst.validate_params(params(backup="app-20240501T020000Z-1a2b")) == []
    assert rst.validate_params(params(before="2024-05-01T12:00:00Z")) == []
    assert rst.validate_params(params(before="2024-05-01", jobs=4)) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"target_database": ""}, "target_database must not be empty"),
        ({"target_database": "x" * 64}, "longer than 63 bytes"),
        ({"target_database": "é" * 32}, "longer than 63 bytes"),
        ({"target_database": "template1"}, "template database"),
        ({"target_database": "template0"}, "template database"),
        ({"target_database": "postgres"}, "pick another maintenance_db"),
        ({"maintenance_db": "app"}, "pick another maintenance_db"),
        ({"maintenance_db": ""}, "maintenance_db must not be empty"),
        ({"storage_url": " "}, "storage_url must not be empty"),
        ({"backup": ""}, "backup must be 'latest' or a backup id"),
        ({"backup": "app-x", "before": "2024-05-01"}, "use it with backup=latest"),
        ({"before": "yesterday"}, "before: not an ISO 8601 time"),
        ({"jobs": 0}, "jobs must be >= 1"),
        ({"terminate_timeout_s": 0}, "terminate_timeout_s must be > 0"),
        ({"dsn": " "}, "dsn must not be empty"),
        ({"connect_timeout": 0}, "connect_timeout must be >= 1"),
    ],
)
def test_invalid_input(overrides: dict[str, Any], expected: str) -> None:
    errors = rst.validate_params(params(**overrides))
    assert any(expected in e for e in errors), errors


def test_validation_errors_never_show_the_password() -> None:
    errors = rst.validate_params(params(target_database="", jobs=0, before="nope"))
    assert len(errors) == 3
    assert not any(SECRET in e for e in errors)


# ----------------------------------------------------------------- client tools: argv, conninfo


def test_tool_conninfo_moves_the_password_out_and_points_at_the_database() -> None:
    conninfo, password = rst.tool_conninfo(params()["dsn"], "app__opsbook_restore_abc")
    assert password == SECRET
    assert SECRET not in conninfo and "password" not in conninfo
    assert "dbname=app__opsbook_restore_abc" in conninfo
    assert "host=127.0.0.1" in conninfo and "user=ops" in conninfo


def test_tool_conninfo_from_a_uri_keeps_other_parameters() -> None:
    dsn = "postgresql://ops:p%40ss@db.internal:6432/app?sslmode=require&connect_timeout=5"
    conninfo, password = rst.tool_conninfo(dsn, "my db")
    assert password == "p@ss"
    assert "p@ss" not in conninfo and "p%40ss" not in conninfo
    assert (
        "dbname='my db'" in conninfo and "sslmode=require" in conninfo and "port=6432" in conninfo
    )


def test_tool_conninfo_without_password() -> None:
    conninfo, password = rst.tool_conninfo("host=/run/postgresql dbname=app", "other")
    assert password is None and "dbname=other" in conninfo


def test_dsn_for_database_keeps_the_password_for_psycopg_only() -> None:
    dsn = rst.dsn_for_database("postgresql://u:pw@h/app", "postgres")
    assert "dbname=postgres" in dsn and "password=pw" in dsn


def test_pg_restore_argv_single_job_reads_stdin() -> None:
    argv = rst.pg_restore_argv("/usr/bin/pg_restore", "host=h dbname=x", 1, None)
    assert argv == [
        "/usr/bin/pg_restore", "--dbname", "host=h dbname=x", "--exit-on-error", "--no-password",
        "--no-owner", "--no-privileges", "--no-tablespaces",
    ]  # fmt: skip


def test_pg_restore_argv_parallel_needs_a_file_and_options_map() -> None:
    argv = rst.pg_restore_argv(
        "pg_restore", "dbname=x", 3, "/tmp/d.pgdump",
        no_owner=False, no_privileges=False, no_tablespaces=False, role="app_owner",
    )  # fmt: skip
    assert argv == [
        "pg_restore", "--dbname", "dbname=x", "--exit-on-error", "--no-password",
        "--role", "app_owner", "--jobs", "3", "/tmp/d.pgdump",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"needs an archive file"):
        rst.pg_restore_argv("pg_restore", "dbname=x", 2, None)


def test_major_of() -> None:
    assert rst.major_of(150008) == 15
    assert rst.major_of(170000) == 17
    assert rst.major_of(90624) == 9


# ----------------------------------------------------------------- messages


def test_integrity_problem() -> None:
    entry = {"key": "b/data.pgdump.zst", "bytes": 10, "sha256": "a" * 64}
    assert rst.integrity_problem("b", "data", entry, 10, "a" * 64) is None
    text = rst.integrity_problem("b", "data", entry, 10, "b" * 64)
    assert text.startswith("backup b is corrupted (data object sha256 " + "b" * 64)
    assert "!= manifest " + "a" * 64 in text
    text = rst.integrity_problem("b", "data", entry, 11, "a" * 64)
    assert "is corrupted" in text and "11 bytes" in text


def test_count_mismatches_and_description() -> None:
    expected = {"public.users": 200, "public.tasks": 1000, "public.gone": 3}
    restored = {"public.users": 200, "public.tasks": 999, "public.gone": None}
    mismatches = rst.count_mismatches(expected, restored)
    assert mismatches == [
        {"table": "public.gone", "expected": 3, "restored": None},
        {"table": "public.tasks", "expected": 1000, "restored": 999},
    ]
    text = rst.describe_mismatches(mismatches)
    assert (
        "public.gone: missing" in text and "public.tasks: 999 rows restored, manifest 1000" in text
    )
    many = [{"table": f"t{i}", "expected": 1, "restored": 0} for i in range(8)]
    assert rst.describe_mismatches(many).endswith("and 3 more")
    assert rst.count_mismatches(expected, dict(expected)) == []


def test_describe_sessions_groups_by_application_and_user() -> None:
    sessions = [
        {"pid": 1, "application_name": "web", "usename": "app"},
        {"pid": 2, "application_name": "web", "usename": "app"},
        {"pid": 3, "application_name": "psql", "usename": "ops"},
        {"pid": 4, "application_name": "", "usename": None},
    ]
    text = rst.describe_sessions("app", sessions)
    assert text.startswith(
        "4 open sessions on database 'app': 2 from application 'web' as user 'app'"
    )
    assert "1 from application 'psql' as user 'ops'" in text
    assert "application '(none)' as user '(hidden)'" in text
    one = rst.describe_sessions("app", sessions[:1])
    assert one.startswith("1 open session on")


def test_filter_globals_leaves_out_the_connecting_role_only() -> None:
    script = "\n".join(
        [
            "SET default_transaction_read_only = off;",
            "CREATE ROLE opsbook;",
            "ALTER ROLE opsbook WITH SUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$4096:x';",
            "CREATE ROLE app;",
            "ALTER ROLE app WITH LOGIN;",
            'CREATE ROLE "Odd ""Name""";',
            'ALTER ROLE "Odd ""Name""" WITH NOLOGIN;',
            "CREATE ROLE opsbook_reader;",
            "GRANT app TO opsbook GRANTED BY opsbook;",
        ]
    )
    kept, dropped = rst.filter_globals(script, "opsbook")
    assert dropped == 2
    assert "PASSWORD" not in kept and "CREATE ROLE opsbook;" not in kept
    assert "CREATE ROLE opsbook_reader;" in kept and "CREATE ROLE app;" in kept
    assert "GRANT app TO opsbook" in kept  # memberships are not role attributes
    kept, dropped = rst.filter_globals(script, 'Odd "Name"')
    assert dropped == 2 and "Odd" not in kept


def test_disk_space_needed() -> None:
    manifest = {
        "uncompressed_bytes": 1000,
        "objects": {"data": {"bytes": 100}, "globals": {"bytes": 10}},
    }
    assert rst.disk_space_needed(manifest, 1) == int(110 * 1.05)
    # jobs > 1: decompressed while fetched, no local copy of the compressed data object
    assert rst.disk_space_needed(manifest, 2) == int(1010 * 1.05)
    assert rst.disk_space_needed({"objects": {"data": {"bytes": 100}, "globals": None}}, 1) == 105


def test_parse_toc() -> None:
    toc = """;
; Archive created at 2024-05-01 02:00:00 UTC
;     dbname: app
;     TOC Entries: 31
;     Compression: 0
;     Format: CUSTOM
;     Dumped from database version: 15.8 (Debian 15.8-0+deb12u1)
;     Dumped by pg_dump version: 15.8 (Debian 15.8-0+deb12u1)
;
; Selected TOC Entries:
;
215; 1259 16386 TABLE public tasks opsbook
3340; 0 16386 TABLE DATA public tasks opsbook
3341; 0 16390 TABLE DATA public users opsbook
"""
    info = rst.parse_toc(toc)
    assert info.format == "CUSTOM" and info.entries == 31 and info.table_data == 2
    assert info.dumped_by.startswith("15.8") and info.dumped_from.startswith("15.8")
    assert rst.parse_toc("").format is None


def test_plan_actions() -> None:
    new = rst.plan_actions("new", "app", "app__opsbook_restore_x", "b1", params(jobs=2))
    assert new[0].startswith("fetch backup b1")
    assert "2 job(s)" in new[2] and new[-1] == "rename it to 'app'"
    replace = rst.plan_actions(
        "replace", "app", "s", "b1",
        params(terminate_connections=True, keep_previous=False, analyze=False, globals=True),
    )  # fmt: skip
    text = "\n".join(replace)
    assert "globals" in replace[1] and "ANALYZE" not in text
    assert "terminate its open sessions" in text and "in one transaction" in text
    assert replace[-1] == "drop the previous database"


# ----------------------------------------------------------------- pipelines


def test_pipeline_failure_names_the_stage_that_broke(tmp_path: Path) -> None:
    # the reader fails at once; the writer dies of SIGPIPE, which is not the cause
    results = rst.run_pipeline(
        [["yes"], ["sh", "-c", "echo 'pg_restore: error: boom' >&2; exit 1"]],
        dict(os.environ),
        tmp_path,
    )
    assert results[0].returncode == -signal.SIGPIPE
    text = rst.pipeline_failure(results)
    assert text == "sh exited 1: pg_restore: error: boom"


def test_pipeline_failure_reports_a_lone_sigpipe() -> None:
    results = [rst.StageResult("zstd", -signal.SIGPIPE, "")]
    assert rst.pipeline_failure(results) == "zstd was killed by signal 13"


def test_fetch_object_hashes_what_it_writes(tmp_path: Path) -> None:
    import hashlib
    import io

    data = os.urandom(3 * 1024 * 1024 + 17)

    class FakeStorage:
        def open_reader(self, key: str) -> io.BytesIO:
            assert key == "b/data.pgdump.zst"
            return io.BytesIO(data)

    dest = tmp_path / "data"
    size, digest = rst.fetch_object(FakeStorage(), "b/data.pgdump.zst", dest)
    assert size == len(data) and digest == hashlib.sha256(data).hexdigest()
    assert dest.read_bytes() == data
    assert dest.stat().st_mode & 0o777 == 0o600


def test_fetch_object_is_the_shared_helper() -> None:
    from tests.loaders import load_module_utils

    assert rst.fetch_object is load_module_utils("opsbook_backup").fetch_object


# ----------------------------------------------------------------- parallel statements


class _FakeConn:
    def __init__(self, log: list[Any], fail_on: Any = None) -> None:
        self.log, self.fail_on = log, fail_on
        self.closed = self.cancelled = False

    @contextlib.contextmanager
    def cursor(self) -> Any:
        yield self

    def execute(self, item: Any) -> None:
        if item == self.fail_on:
            raise RuntimeError(f"boom on {item}")
        time.sleep(0.01)
        self.log.append(item)

    def cancel(self) -> None:
        self.cancelled = True

    def close(self) -> None:
        self.closed = True


def test_run_on_connections_runs_every_item_once_and_closes() -> None:
    log: list[Any] = []
    conns: list[_FakeConn] = []

    def connect() -> _FakeConn:
        conns.append(_FakeConn(log))
        return conns[-1]

    setups: list[Any] = []
    items = list(range(20))
    results = rst.run_on_connections(
        connect, 3, items, lambda cur, item: (cur.execute(item), item * 2)[1], setup=setups.append
    )
    assert results == {i: i * 2 for i in items}
    assert sorted(log) == items and len(conns) == 3 and len(setups) == 3
    assert all(c.closed and not c.cancelled for c in conns)
    # never more connections than items, none for no items
    conns.clear()
    assert rst.run_on_connections(connect, 8, ["a"], lambda cur, item: 1) == {"a": 1}
    assert len(conns) == 1
    assert rst.run_on_connections(connect, 8, [], lambda cur, item: 1) == {}
    assert len(conns) == 1


def test_run_on_connections_raises_the_first_failure_and_stops() -> None:
    log: list[Any] = []
    conns: list[_FakeConn] = []

    def connect() -> _FakeConn:
        conns.append(_FakeConn(log, fail_on=3))
        return conns[-1]

    with pytest.raises(RuntimeError, match="boom on 3"):
        rst.run_on_connections(connect, 2, list(range(50)), lambda cur, item: cur.execute(item))
    assert len(log) < 49 and all(c.closed for c in conns)


def test_largest_first() -> None:
    sizes = {("public", "small"): 10, ("public", "big"): 1000, ("My Schema", "x"): 500}
    keys = ["public.small", "public.missing", '"My Schema".x', "public.big"]
    assert rst.largest_first(keys, sizes) == [
        "public.big", '"My Schema".x', "public.small", "public.missing",
    ]  # fmt: skip


# ----------------------------------------------------------------- documentation


def _doc() -> dict[str, Any]:
    return module_documentation(rst)


def test_documented_options_match_the_argument_spec() -> None:
    documented = _doc()["options"]
    spec = rst.argument_spec()
    assert set(documented) == set(spec)
    for name, option in spec.items():
        doc = documented[name]
        assert doc.get("type", "str") == option.get("type", "str"), name
        assert doc.get("default") == option.get("default"), name
        assert bool(doc.get("required")) == bool(option.get("required")), name
        assert doc.get("choices") == option.get("choices"), name
        assert doc.get("aliases") == option.get("aliases"), name
    assert spec["dsn"]["no_log"] is True


def test_return_documents_every_result_key() -> None:
    returned = set(yaml.safe_load(rst.RETURN))
    keys = {"backup_id", "target_database", "mode", "scratch_database", "previous_database",
            "previous_dropped", "terminated_sessions", "table_counts_checked",
            "table_count_mismatches", "bytes_fetched", "duration_s", "restored", "msg",
            "backup", "backup_age_s", "jobs", "globals_restored", "open_sessions",
            "pg_restore_path", "pg_restore_version", "server_version", "restore_mb_s",
            "actions", *rst.TIMINGS}  # fmt: skip
    assert keys <= returned, keys - returned
    assert yaml.safe_load(rst.EXAMPLES)




# ----------------------------------------------------------------- leftovers of earlier runs


def test_scratch_mark_round_trips_and_only_stale_unused_marked_databases_are_picked() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    mark = rst.scratch_mark(now - timedelta(hours=2), "app-20240501T020000Z-1a2b")
    assert mark == (
        "opsbook:restore-scratch created=2024-05-01T10:00:00Z backup=app-20240501T020000Z-1a2b"
    )
    rows = [
        ("old_unused", mark, 0),
        ("old_in_use", mark, 1),  # a live restore: sessions
        ("young", rst.scratch_mark(now - timedelta(minutes=5), ""), 0),
        ("kept", "opsbook:kept-failed-restore: kept for inspection", 0),
        ("operators", "opsbook:restore-scratch is what I call it", 0),  # not our format
        ("plain", None, 0),
    ]
    stale = rst.stale_scratch(rows, now, older_than_s=3600)
    assert stale == [
        {"database": "old_unused", "created": "2024-05-01T10:00:00Z",
         "backup": "app-20240501T020000Z-1a2b"}
    ]  # fmt: skip
    assert [s["database"] for s in rst.stale_scratch(rows, now, 0)] == ["old_unused", "young"]


def test_previous_databases_by_exact_pattern_newest_first_and_by_age() -> None:
    names = [
        "app__opsbook_old_20240101T000000Z",
        "app__opsbook_old_20240420T101500Z",
        "app__opsbook_old_notatime",
        "appx__opsbook_old_20200101T000000Z",
        "app",
    ]
    kept = rst.previous_databases(names, "app")
    assert kept == [
        {"database": "app__opsbook_old_20240420T101500Z", "replaced_at": "2024-04-20T10:15:00Z"},
        {"database": "app__opsbook_old_20240101T000000Z", "replaced_at": "2024-01-01T00:00:00Z"},
    ]
    now = datetime(2024, 5, 1, tzinfo=UTC)
    oldest = "app__opsbook_old_20240101T000000Z"
    assert rst.previous_older_than(kept, now, 30, keep=None) == [oldest]
    assert rst.previous_older_than(kept, now, 5, keep=oldest) == [
        "app__opsbook_old_20240420T101500Z"
    ]


def test_stale_after_and_drop_previous_inputs_are_checked() -> None:
    errors = rst.validate_params(params(stale_after_minutes=-1, drop_previous_after_days=0))
    assert "stale_after_minutes must be >= 0, got -1" in errors
    assert "drop_previous_after_days must be >= 1 (days), got 0" in errors


def test_stale_work_dirs_are_those_no_live_run_holds(tmp_path: Path) -> None:
    live, live_fd = rst.make_work_dir(str(tmp_path))
    dead, dead_fd = rst.make_work_dir(str(tmp_path))
    os.close(dead_fd)  # its run died: the lock is released
    old = tmp_path / "opsbook-restore-oldversion"  # an older opsbook's, no lock file
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    young = tmp_path / "opsbook-restore-young"
    young.mkdir()
    other = tmp_path / "not-opsbook"
    other.mkdir()
    try:
        stale = rst.stale_work_dirs(str(tmp_path), older_than_s=3600)
        assert sorted(stale) == sorted([dead, old])
        assert (live / ".opsbook-lock").exists()  # checking a live one leaves it held
        assert live not in rst.stale_work_dirs(str(tmp_path), older_than_s=0)
    finally:
        os.close(live_fd)
    assert live in rst.stale_work_dirs(str(tmp_path), older_than_s=3600)  # its run ended
