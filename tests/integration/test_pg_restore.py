"""library/pg_restore.py against the lab's real PostgreSQL and S3 server (moto), and file://.

Backups are taken by the real library/pg_backup.py; both modules run through small ad hoc
playbooks (ansible-playbook, the project's ansible.cfg, connection local). Round trips on
the sample app schema and on pgbench data compare row counts and a checksum of each
table's ordered content; the faults (no or wrong confirmation, a corrupted object, open
sessions, tampered manifest counts) must leave the target exactly as it was.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from opsbook.lab import PostgresCluster, load_app_schema
from tests.harness import PROJECT_ROOT, VENV_BIN, ansible_env, run_ansible
from tests.integration.stats_helper import STATS_FILE_ENV, read_results, results_task, stats_env
from tests.lab import MotoS3Server, app_table_checksums, load_pgbench

pytestmark = pytest.mark.integration

BUCKET = "opsbook-test"
SRC_DB = "rst_src"
BENCH_DB = "rst_bench"
APP_TABLES = ("users", "tasks")
BENCH_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


# =================================================================== running modules


@dataclass
class Run:
    result: dict[str, Any]
    stdout: str
    stderr: str

    @property
    def failed(self) -> bool:
        return bool(self.result.get("failed"))

    @property
    def msg(self) -> str:
        return str(self.result.get("msg", ""))


class ModuleRunner:
    """Run one module task in an ad hoc playbook; return its registered result."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.counter = itertools.count(1)

    def __call__(self, module: str, args: dict[str, Any], check: bool = False) -> Run:
        playbook, result_file = self.write(module, args, check)
        proc = run_ansible(
            [str(playbook), *self.ANSIBLE_ARGS], env=self.env(result_file), timeout=900,
            tool="ansible-playbook",
        )  # fmt: skip
        assert result_file.exists(), proc.stdout + proc.stderr
        return Run(read_results(result_file), proc.stdout, proc.stderr)

    def env(self, result_file: Path) -> dict[str, str]:
        """The project's environment, with the stats callback writing result_file."""
        stats, _ = stats_env(self.work)  # the callback; its file: result_file
        return ansible_env(self.work / "oplog.jsonl", {**stats, STATS_FILE_ENV: str(result_file)})

    ANSIBLE_ARGS = ("-i", "localhost,", "-c", "local",
                    "-e", f"ansible_python_interpreter={VENV_BIN / 'python'}")  # fmt: skip

    def start(self, module: str, args: dict[str, Any]) -> tuple[subprocess.Popen[str], Path]:
        """Start the playbook without waiting: (process, result file)."""
        playbook, result_file = self.write(module, args, False)
        proc = subprocess.Popen(
            [str(VENV_BIN / "ansible-playbook"), str(playbook), *self.ANSIBLE_ARGS],
            cwd=PROJECT_ROOT,
            env=self.env(result_file),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return proc, result_file

    def write(self, module: str, args: dict[str, Any], check: bool) -> tuple[Path, Path]:
        number = next(self.counter)
        result_file = self.work / f"result-{module}-{number}.json"
        play = [
            {
                "hosts": "localhost",
                "gather_facts": False,
                "tasks": [
                    {
                        "name": f"Run {module}",
                        f"opsbook.runbooks.{module}": args,
                        "register": "out",
                        "ignore_errors": True,
                        "check_mode": check,
                    },
                    results_task("out"),
                ],
            }
        ]
        playbook = self.work / f"play-{module}-{number}.yml"
        playbook.write_text(json.dumps(play, indent=1))
        return playbook, result_file


@pytest.fixture
def run_module(tmp_path: Path) -> ModuleRunner:
    return ModuleRunner(tmp_path / "runs")


# =================================================================== database helpers


def databases(pg: PostgresCluster) -> set[str]:
    return {row[0] for row in pg.execute("SELECT datname FROM pg_database")}


@pytest.fixture
def db_name(pg: PostgresCluster) -> Iterator[Callable[[str], str]]:
    """Unique database names for a test; every database starting with one is dropped after."""
    made: list[str] = []

    def make(label: str) -> str:
        name = f"rst_{label}_{secrets.token_hex(3)}"
        made.append(name)
        return name

    yield make
    for name in databases(pg):
        if any(name.startswith(prefix) for prefix in made):
            pg.drop_database(name)


def leftovers(pg: PostgresCluster, target: str) -> set[str]:
    """Scratch or previous databases left for target."""
    return {n for n in databases(pg) if n.startswith(target + "__opsbook_")}


# =================================================================== backups


@dataclass
class Backup:
    storage_url: str
    backup_id: str
    checksums: dict[str, str]  # of the source, when the backup was taken
    counts: dict[str, int]
    path: Path | None = None  # file:// storage directory


def take_backup(
    runner: ModuleRunner, pg: PostgresCluster, database: str, storage_url: str, **extra: Any
) -> str:
    run = runner(
        "pg_backup",
        {"dsn": pg.dsn_for(database), "storage_url": storage_url, "env": "test", **extra},
    )
    assert not run.failed, run.msg
    return str(run.result["backup_id"])


@pytest.fixture(scope="session")
def src_backup(pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Backup:
    """A pg_backup of the sample app schema (database rst_src) in a session file:// storage."""
    dsn = pg.create_database(SRC_DB)
    load_app_schema(dsn, users=300, tasks_per_user=7)
    work = tmp_path_factory.mktemp("restore-src")
    storage = work / "backups"
    storage.mkdir()
    backup_id = take_backup(ModuleRunner(work / "runs"), pg, SRC_DB, f"file://{storage}")
    return Backup(
        f"file://{storage}",
        backup_id,
        app_table_checksums(dsn, APP_TABLES),
        {"users": 300, "tasks": 2100},
        storage,
    )


@pytest.fixture
def file_backup(src_backup: Backup, tmp_path: Path) -> Backup:
    """This test's own copy of the session backup (a test may corrupt or tamper with it)."""
    assert src_backup.path is not None
    storage = tmp_path / "backups"
    shutil.copytree(src_backup.path, storage)
    return Backup(
        f"file://{storage}", src_backup.backup_id, src_backup.checksums, src_backup.counts, storage
    )


def restore_args(pg: PostgresCluster, backup: Backup, target: str, **extra: Any) -> dict[str, Any]:
    # the DSN of the application database itself: the module works from maintenance_db
    return {
        "dsn": pg.dsn_for("app"),
        "storage_url": backup.storage_url,
        "backup": backup.backup_id,
        "target_database": target,
        "env": "test",
        **extra,
    }


def assert_no_secret(pg: PostgresCluster, run: Run) -> None:
    assert pg.password not in run.stdout + run.stderr + json.dumps(run.result)


def flip_a_byte(data: bytes, offset: int | None = None) -> bytes:
    at = len(data) // 2 if offset is None else offset
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]


# =================================================================== round trips


def test_round_trip_app_schema_into_a_new_database(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any
) -> None:
    target = db_name("new")
    run = run_module("pg_restore", restore_args(pg, file_backup, target))
    assert not run.failed, run.msg
    result = run.result
    assert result["changed"] is True and result["restored"] is True
    assert result["backup_id"] == file_backup.backup_id and result["mode"] == "new"
    assert result["table_counts_checked"] == 2 and result["table_count_mismatches"] == []
    assert result["previous_database"] is None and result["terminated_sessions"] == []
    for key in ("fetch_s", "verify_s", "restore_s", "counts_s", "analyze_s", "swap_s"):
        assert isinstance(result[key], float), key
    assert result["duration_s"] > 0 and result["bytes_fetched"] == result["backup"]["bytes"]
    assert result["pg_restore_path"].endswith("/15/bin/pg_restore")
    assert "restored backup" in result["msg"]
    assert app_table_checksums(pg.dsn_for(target), APP_TABLES) == file_backup.checksums
    # indexes, constraints and sequences came along
    rows = pg.execute(
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'tasks'",
        dbname=target,
    )
    assert rows[0][0] == 4
    assert pg.execute("SELECT last_value FROM users_id_seq", dbname=target)[0][0] == 300
    assert leftovers(pg, target) == set()
    assert_no_secret(pg, run)


def test_round_trip_pgbench_via_s3_with_two_jobs(
    pg: PostgresCluster, s3: MotoS3Server, run_module: ModuleRunner, db_name: Any
) -> None:
    source = load_pgbench(pg, BENCH_DB, scale=2)
    pg.execute(  # some history rows too (pgbench -i leaves the table empty)
        "INSERT INTO pgbench_history SELECT (i % 20) + 1, (i % 2) + 1, i, i % 1000, now(), NULL"
        " FROM generate_series(1, 5000) i",
        dbname=BENCH_DB,
    )
    before = app_table_checksums(source, BENCH_TABLES)
    storage_url = f"s3://{BUCKET}/restore-{secrets.token_hex(4)}"
    backup_id = take_backup(run_module, pg, BENCH_DB, storage_url, s3_endpoint_url=s3.endpoint_url)
    backup = Backup(storage_url, backup_id, before, {})
    for jobs in (2, 1):
        target = db_name(f"bench{jobs}")
        run = run_module(
            "pg_restore",
            restore_args(pg, backup, target, s3_endpoint_url=s3.endpoint_url, jobs=jobs),
        )
        assert not run.failed, run.msg
        assert run.result["jobs"] == jobs and run.result["table_counts_checked"] == 4
        assert (run.result["decompress_s"] is not None) is (jobs > 1)
        assert app_table_checksums(pg.dsn_for(target), BENCH_TABLES) == before
        counts = pg.execute("SELECT count(*) FROM pgbench_accounts", dbname=target)
        assert counts[0][0] == 200_000
        assert_no_secret(pg, run)


def test_latest_before_a_time_and_the_source_database(
    pg: PostgresCluster, run_module: ModuleRunner, db_name: Any, tmp_path: Path
) -> None:
    source = db_name("src")
    load_app_schema(pg.create_database(source), users=10, tasks_per_user=1)
    storage = f"file://{tmp_path / 'two'}"
    first = take_backup(run_module, pg, source, storage)
    pg.execute("DELETE FROM tasks WHERE id > 5", dbname=source)
    second = take_backup(run_module, pg, source, storage)
    started = json.loads((tmp_path / "two" / second / "manifest.json").read_text())["started"]
    first_started = json.loads((tmp_path / "two" / first / "manifest.json").read_text())["started"]
    assert first_started < started

    latest = db_name("latest")
    args = {"dsn": pg.dsn, "storage_url": storage, "target_database": latest}
    run = run_module("pg_restore", args)
    assert not run.failed, run.msg
    assert run.result["backup_id"] == second
    assert pg.execute("SELECT count(*) FROM tasks", dbname=latest)[0][0] == 5

    older = db_name("older")
    run = run_module("pg_restore", {**args, "target_database": older, "before": first_started})
    assert not run.failed, run.msg
    assert run.result["backup_id"] == first
    assert pg.execute("SELECT count(*) FROM tasks", dbname=older)[0][0] == 10

    # a second database in the same storage: "latest" must say which one
    take_backup(run_module, pg, "app", storage)
    third = db_name("ambiguous")
    run = run_module("pg_restore", {**args, "target_database": third})
    assert run.failed and "set source_database" in run.msg
    run = run_module("pg_restore", {**args, "target_database": third, "source_database": source})
    assert not run.failed, run.msg
    assert run.result["backup_id"] == second


# =================================================================== new and replace rules


def test_new_refuses_an_existing_target(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any
) -> None:
    target = db_name("exists")
    load_app_schema(pg.create_database(target), users=5, tasks_per_user=1)
    before = app_table_checksums(pg.dsn_for(target), APP_TABLES)
    run = run_module("pg_restore", restore_args(pg, file_backup, target))
    assert run.failed
    assert "exists; mode=new never touches an existing database" in run.msg
    assert "was not touched" in run.msg
    assert app_table_checksums(pg.dsn_for(target), APP_TABLES) == before
    assert leftovers(pg, target) == set()


def test_replace_without_confirm_is_refused_and_nothing_is_touched(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any
) -> None:
    target = db_name("noconfirm")
    load_app_schema(pg.create_database(target), users=5, tasks_per_user=1)
    before = app_table_checksums(pg.dsn_for(target), APP_TABLES)
    names = databases(pg)
    for confirm in (None, "", target + "x", "app"):
        args = restore_args(pg, file_backup, target, mode="replace")
        if confirm is not None:
            args["confirm"] = confirm
        run = run_module("pg_restore", args)
        assert run.failed, confirm
        assert "refused" in run.msg and "nothing was touched" in run.msg
        assert repr(target) in run.msg
        assert run.result["restored"] is False and run.result["bytes_fetched"] == 0
    assert databases(pg) == names
    assert app_table_checksums(pg.dsn_for(target), APP_TABLES) == before


def test_replace_with_confirm_replaces_and_keeps_the_previous(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any
) -> None:
    target = db_name("replace")
    load_app_schema(pg.create_database(target), users=5, tasks_per_user=1)
    before = app_table_checksums(pg.dsn_for(target), APP_TABLES)
    run = run_module(
        "pg_restore", restore_args(pg, file_backup, target, mode="replace", confirm=target)
    )
    assert not run.failed, run.msg
    result = run.result
    previous = result["previous_database"]
    assert previous.startswith(target + "__opsbook_old_") and result["previous_dropped"] is False
    assert app_table_checksums(pg.dsn_for(target), APP_TABLES) == file_backup.checksums
    # the previous good state is kept, intact and connectable
    assert app_table_checksums(pg.dsn_for(previous), APP_TABLES) == before
    assert leftovers(pg, target) == {previous}
    assert f"kept as {previous!r}" in result["msg"]

    # again, dropping the previous this time
    run = run_module(
        "pg_restore",
        restore_args(pg, file_backup, target, mode="replace", confirm=target, keep_previous=False),
    )
    assert not run.failed, run.msg
    assert run.result["previous_dropped"] is True
    assert [k["database"] for k in run.result["previous_databases"]] == [previous]
    assert leftovers(pg, target) == {previous}  # only the first run's previous remains
    assert app_table_checksums(pg.dsn_for(target), APP_TABLES) == file_backup.checksums


def test_drop_previous_after_days_drops_only_the_targets_old_previous_databases(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any
) -> None:
    target = db_name("prev")
    pg.create_database(target)
    pg.execute(f'COMMENT ON DATABASE "{target}" IS \'the app, by the operator\'')
    old = f"{target}__opsbook_old_20200101T000000Z"  # a replace long ago
    recent = f"{target}__opsbook_old_{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    decoys = [
        f"{target}__opsbook_old_notatime",  # not opsbook's name pattern
        f"{target}x__opsbook_old_20200101T000000Z",  # another database's previous copy
    ]
    for name in (old, recent, *decoys):
        pg.create_database(name)
    args = restore_args(pg, file_backup, target, mode="replace", confirm=target)

    run = run_module("pg_restore", {**args, "drop_previous_after_days": 30}, check=True)
    assert not run.failed, run.msg
    assert run.result["previous_dropped_by_age"] == [old]  # would drop; check mode keeps it
    assert old in databases(pg)

    run = run_module("pg_restore", {**args, "drop_previous_after_days": 30})
    assert not run.failed, run.msg
    previous = run.result["previous_database"]
    assert run.result["previous_dropped_by_age"] == [old]
    assert old not in databases(pg)
    assert {previous, recent, *decoys} <= databases(pg)  # this run's, a young one, not ours
    assert [k["database"] for k in run.result["previous_databases"]] == sorted(
        [previous, recent], reverse=True
    )
    # the operator's comment moved with the name; no opsbook marker is left on the target
    comment = pg.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        params=(target,),
    )
    assert comment == [("the app, by the operator",)]


def test_replace_of_a_missing_target_is_refused(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any
) -> None:
    target = db_name("missing")
    run = run_module(
        "pg_restore", restore_args(pg, file_backup, target, mode="replace", confirm=target)
    )
    assert run.failed and "does not exist: nothing to replace" in run.msg
    assert target not in databases(pg)


def test_production_requires_confirm_even_for_new(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any
) -> None:
    target = db_name("prod")
    run = run_module("pg_restore", restore_args(pg, file_backup, target, env="production"))
    assert run.failed
    assert "env is production" in run.msg and "nothing was touched" in run.msg
    assert target not in databases(pg)
    # the inventory variable name works as well
    args = restore_args(pg, file_backup, target, confirm=target)
    args.pop("env")
    args["opsbook_env"] = "production"
    run = run_module("pg_restore", args)
    assert not run.failed, run.msg
    assert app_table_checksums(pg.dsn_for(target), APP_TABLES) == file_backup.checksums


# =================================================================== corrupted backups


def test_corrupted_file_object_is_refused_before_the_target_is_touched(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any
) -> None:
    assert file_backup.path is not None
    data = file_backup.path / file_backup.backup_id / "data.pgdump.zst"
    data.write_bytes(flip_a_byte(data.read_bytes()))  # same size: only sha256 can tell
    names = databases(pg)

    target = db_name("corrupt")
    run = run_module("pg_restore", restore_args(pg, file_backup, target))
    assert run.failed
    assert f"backup {file_backup.backup_id} is corrupted (data object sha256 " in run.msg
    assert "!= manifest" in run.msg
    assert f"the target database {target!r} was not touched" in run.msg
    assert databases(pg) == names  # not created, no scratch database

    existing = db_name("corrupt_replace")
    load_app_schema(pg.create_database(existing), users=5, tasks_per_user=1)
    before = app_table_checksums(pg.dsn_for(existing), APP_TABLES)
    run = run_module(
        "pg_restore", restore_args(pg, file_backup, existing, mode="replace", confirm=existing)
    )
    assert run.failed and "is corrupted" in run.msg
    assert f"the target database {existing!r} was not touched" in run.msg
    assert app_table_checksums(pg.dsn_for(existing), APP_TABLES) == before
    assert leftovers(pg, existing) == set()

    # a truncated object: the catalog already sees the size differ from the manifest
    data.write_bytes(data.read_bytes()[:-100])
    run = run_module("pg_restore", restore_args(pg, file_backup, target))
    assert run.failed and "is unusable" in run.msg and "was not touched" in run.msg
    assert databases(pg) == names | {existing}


def test_corrupted_s3_object_is_refused_before_the_target_is_touched(
    pg: PostgresCluster,
    s3: MotoS3Server,
    src_backup: Backup,
    run_module: ModuleRunner,
    db_name: Any,
) -> None:
    prefix = f"restore-{secrets.token_hex(4)}"
    assert src_backup.path is not None
    client = s3.client()
    for path in (src_backup.path / src_backup.backup_id).iterdir():
        body = path.read_bytes()
        if path.name == "data.pgdump.zst":
            body = flip_a_byte(body, offset=len(body) - 10)
        client.put_object(
            Bucket=BUCKET, Key=f"{prefix}/{src_backup.backup_id}/{path.name}", Body=body
        )
    backup = Backup(f"s3://{BUCKET}/{prefix}", src_backup.backup_id, {}, {})
    target = db_name("s3corrupt")
    load_app_schema(pg.create_database(target), users=5, tasks_per_user=1)
    before = app_table_checksums(pg.dsn_for(target), APP_TABLES)
    run = run_module(
        "pg_restore",
        restore_args(
            pg, backup, target, s3_endpoint_url=s3.endpoint_url, mode="replace", confirm=target
        ),
    )
    assert run.failed and "is corrupted" in run.msg and "was not touched" in run.msg
    assert app_table_checksums(pg.dsn_for(target), APP_TABLES) == before
    assert leftovers(pg, target) == set()


def test_one_pass_fetch_with_two_jobs_restores_identical_content(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any, tmp_path: Path
) -> None:
    """jobs=2: fetched, hashed and decompressed in one pass; same content; no temp file left."""
    work = tmp_path / "work"
    work.mkdir()
    target = db_name("onepass")
    run = run_module(
        "pg_restore", restore_args(pg, file_backup, target, jobs=2, work_dir=str(work))
    )
    assert not run.failed, run.msg
    result = run.result
    assert result["jobs"] == 2 and result["table_counts_checked"] == 2
    assert result["table_count_mismatches"] == []
    assert result["bytes_fetched"] == result["backup"]["bytes"]
    assert isinstance(result["decompress_s"], float) and isinstance(result["analyze_s"], float)
    assert app_table_checksums(pg.dsn_for(target), APP_TABLES) == file_backup.checksums
    # the parallel ANALYZE left statistics on every table, as a plain ANALYZE does
    analyzed = pg.execute(
        "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL ORDER BY 1",
        dbname=target,
    )
    assert [row[0] for row in analyzed] == sorted(APP_TABLES)
    assert leftovers(pg, target) == set() and list(work.iterdir()) == []


def test_corrupted_object_with_two_jobs_is_refused_before_any_database_exists(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any, tmp_path: Path
) -> None:
    assert file_backup.path is not None
    data = file_backup.path / file_backup.backup_id / "data.pgdump.zst"
    data.write_bytes(flip_a_byte(data.read_bytes()))  # same size: only sha256 can tell
    work = tmp_path / "work"
    work.mkdir()
    names = databases(pg)
    target = db_name("corrupt2")
    run = run_module(
        "pg_restore", restore_args(pg, file_backup, target, jobs=2, work_dir=str(work))
    )
    assert run.failed
    assert f"backup {file_backup.backup_id} is corrupted (data object sha256 " in run.msg
    # neither the target nor the scratch database was ever created
    assert f"the target database {target!r} was not touched (it was not created)" in run.msg
    assert databases(pg) == names
    assert list(work.iterdir()) == []  # the half-decompressed archive is gone too


def _bad_but_consistent(backup: Backup, damage: Callable[[bytes], bytes]) -> None:
    """Damage the data object AND make the manifest describe the damaged bytes: the backup
    itself is bad (as if pg_backup had stored a broken stream), its sha256 check passes."""
    import hashlib

    assert backup.path is not None
    data = backup.path / backup.backup_id / "data.pgdump.zst"
    body = damage(data.read_bytes())
    data.write_bytes(body)
    manifest_path = backup.path / backup.backup_id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    digest = hashlib.sha256(body).hexdigest()
    manifest["bytes"] = manifest["objects"]["data"]["bytes"] = len(body)
    manifest["sha256"] = manifest["objects"]["data"]["sha256"] = digest
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


# How zstd says the stream is bad, for each damage (the rest of its line is zstd's own wording).
ZSTD_SAYS = {"truncated": "premature end", "flipped": "doesn't match checksum"}


@pytest.mark.parametrize("damage", list(ZSTD_SAYS))
def test_a_bad_zstd_stream_with_a_matching_sha_fails_cleanly(
    pg: PostgresCluster,
    file_backup: Backup,
    run_module: ModuleRunner,
    db_name: Any,
    tmp_path: Path,
    damage: str,
) -> None:
    # Each damage is put where it gives one outcome: truncated in its middle (zstd decodes the
    # blocks before the cut - the first holds the archive's table of contents - then the
    # stream ends), or one byte of the frame's content checksum flipped (every block decodes;
    # only zstd's checksum can tell, at the end of the stream).
    if damage == "truncated":
        _bad_but_consistent(file_backup, lambda body: body[: len(body) * 2 // 3])
    else:
        _bad_but_consistent(file_backup, lambda body: flip_a_byte(body, len(body) - 2))
    zstd_says = re.escape(ZSTD_SAYS[damage])
    work = tmp_path / "work"
    work.mkdir()
    names = databases(pg)

    # jobs=2: decompressed while fetched, so refused before anything on the server exists
    target = db_name("badzstd2")
    run = run_module(
        "pg_restore", restore_args(pg, file_backup, target, jobs=2, work_dir=str(work))
    )
    assert run.failed
    assert re.fullmatch(
        rf"pg_restore: backup {re.escape(file_backup.backup_id)} cannot be decompressed "
        rf"\(zstd exited 1: [^;]*{zstd_says}\); the stored object matches the manifest's size "
        rf"and sha256, so the backup itself is bad; the target database '{target}' was not "
        r"touched \(it was not created\)",
        run.msg,
    ), run.msg
    assert databases(pg) == names and list(work.iterdir()) == []

    # jobs=1 streams zstd -dc | pg_restore into a scratch database: the archive check passes
    # (it reads the table of contents only), the restore fails, the scratch database is dropped
    target = db_name("badzstd1")
    run = run_module("pg_restore", restore_args(pg, file_backup, target, work_dir=str(work)))
    assert run.failed
    scratch = rf"{target}__opsbook_restore_[0-9a-f]+"
    assert re.fullmatch(
        rf"pg_restore: pg_restore into '(?P<scratch>{scratch})' failed: zstd exited 1: "
        rf"[^;]*{zstd_says}; pg_restore exited 1: pg_restore: error: could not read from input "
        r"file: end of file; the half-restored database '(?P=scratch)' was dropped; the target "
        rf"database '{target}' was not created",
        run.msg,
    ), run.msg
    assert databases(pg) == names and leftovers(pg, target) == set()
    assert list(work.iterdir()) == []


# =================================================================== open sessions


def test_open_sessions_on_the_target_are_a_clear_error(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any
) -> None:
    target = db_name("busy")
    load_app_schema(pg.create_database(target), users=5, tasks_per_user=1)
    before = app_table_checksums(pg.dsn_for(target), APP_TABLES)
    with (
        psycopg.connect(pg.dsn_for(target), application_name="rst-web") as one,
        psycopg.connect(pg.dsn_for(target), application_name="rst-web") as two,
    ):
        run = run_module(
            "pg_restore", restore_args(pg, file_backup, target, mode="replace", confirm=target)
        )
        assert run.failed
        assert f"2 open sessions on database {target!r}" in run.msg
        assert f"2 from application 'rst-web' as user {pg.superuser!r}" in run.msg
        assert "terminate_connections=true" in run.msg and "was not touched" in run.msg
        # the sessions were left alone
        assert one.execute("SELECT 1").fetchone() == (1,)
        assert two.execute("SELECT 1").fetchone() == (1,)
    assert app_table_checksums(pg.dsn_for(target), APP_TABLES) == before
    assert leftovers(pg, target) == set()


def test_terminate_connections_ends_them_and_replaces(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any
) -> None:
    target = db_name("terminate")
    load_app_schema(pg.create_database(target), users=5, tasks_per_user=1)
    conn = psycopg.connect(pg.dsn_for(target), application_name="rst-worker", autocommit=True)
    try:
        pid = conn.info.backend_pid
        run = run_module(
            "pg_restore",
            restore_args(
                pg, file_backup, target, mode="replace", confirm=target, terminate_connections=True
            ),
        )
        assert not run.failed, run.msg
        result = run.result
        assert result["open_sessions"] == 1
        assert [(s["pid"], s["application_name"], s["terminated"])
                for s in result["terminated_sessions"]] == [(pid, "rst-worker", True)]  # fmt: skip
        assert "terminated 1 session(s)" in result["msg"]
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    assert app_table_checksums(pg.dsn_for(target), APP_TABLES) == file_backup.checksums
    previous = result["previous_database"]
    allowed = pg.execute(
        "SELECT datallowconn FROM pg_database WHERE datname = %s", params=(previous,)
    )
    assert allowed == [(True,)]  # the kept previous database accepts connections again


# =================================================================== check mode, verification


def test_check_mode_verifies_and_changes_nothing(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any
) -> None:
    target = db_name("check")
    load_app_schema(pg.create_database(target), users=5, tasks_per_user=1)
    before = app_table_checksums(pg.dsn_for(target), APP_TABLES)
    names = databases(pg)
    run = run_module(
        "pg_restore",
        restore_args(pg, file_backup, target, mode="replace", confirm=target, jobs=2),
        check=True,
    )
    assert not run.failed, run.msg
    result = run.result
    assert result["changed"] is True and result["restored"] is False
    assert result["msg"].startswith(
        f"check mode: backup {file_backup.backup_id} fetched and verified"
    )
    assert result["bytes_fetched"] == result["backup"]["bytes"] > 0
    assert any("in one transaction" in step for step in result["actions"])
    assert databases(pg) == names
    assert app_table_checksums(pg.dsn_for(target), APP_TABLES) == before

    # check mode still refuses what the real run would refuse
    run = run_module(
        "pg_restore", restore_args(pg, file_backup, target, mode="replace"), check=True
    )
    assert run.failed and "refused" in run.msg
    assert file_backup.path is not None
    data = file_backup.path / file_backup.backup_id / "data.pgdump.zst"
    data.write_bytes(flip_a_byte(data.read_bytes()))
    run = run_module(
        "pg_restore",
        restore_args(pg, file_backup, target, mode="replace", confirm=target),
        check=True,
    )
    assert run.failed and "is corrupted" in run.msg
    assert databases(pg) == names


def _tamper_counts(backup: Backup) -> None:
    assert backup.path is not None
    manifest_path = backup.path / backup.backup_id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["table_counts"]["public.users"] += 1
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def test_tampered_table_counts_fail_verification_and_leave_the_target(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any
) -> None:
    _tamper_counts(file_backup)
    users = file_backup.counts["users"]

    target = db_name("counts_new")
    run = run_module("pg_restore", restore_args(pg, file_backup, target))
    assert run.failed
    assert "verification failed: 1 of 2 tables differ from the manifest" in run.msg
    assert f"public.users: {users} rows restored, manifest {users + 1}" in run.msg
    assert "the half-restored database" in run.msg and "was dropped" in run.msg
    assert run.result["table_count_mismatches"] == [
        {"table": "public.users", "expected": users + 1, "restored": users}
    ]
    assert target not in databases(pg) and leftovers(pg, target) == set()

    existing = db_name("counts_replace")
    load_app_schema(pg.create_database(existing), users=5, tasks_per_user=1)
    before = app_table_checksums(pg.dsn_for(existing), APP_TABLES)
    run = run_module(
        "pg_restore", restore_args(pg, file_backup, existing, mode="replace", confirm=existing)
    )
    assert run.failed and "verification failed" in run.msg
    assert f"the target database {existing!r} is unchanged" in run.msg
    assert app_table_checksums(pg.dsn_for(existing), APP_TABLES) == before
    assert leftovers(pg, existing) == set()

    # keep_failed keeps the half-restored copy for a look, and says where it is
    kept = db_name("counts_kept")
    run = run_module("pg_restore", restore_args(pg, file_backup, kept, keep_failed=True))
    assert run.failed and "was kept (keep_failed)" in run.msg
    assert leftovers(pg, kept) == {run.result["scratch_database"]}
    # verify_counts=false trusts the sha256 alone
    trusted = db_name("counts_off")
    run = run_module("pg_restore", restore_args(pg, file_backup, trusted, verify_counts=False))
    assert not run.failed, run.msg
    assert run.result["table_counts_checked"] == 0


def test_a_failing_pg_restore_leaves_nothing_behind(
    pg: PostgresCluster, file_backup: Backup, run_module: ModuleRunner, db_name: Any
) -> None:
    """pg_restore --exit-on-error: restoring as a role that does not exist fails at once."""
    target = db_name("fails")
    run = run_module("pg_restore", restore_args(pg, file_backup, target, role="rst_no_such_role"))
    assert run.failed
    assert "pg_restore into" in run.msg and "failed: pg_restore exited 1" in run.msg
    assert 'role "rst_no_such_role" does not exist' in run.msg
    assert "was dropped" in run.msg and "was not created" in run.msg
    assert target not in databases(pg) and leftovers(pg, target) == set()
    assert_no_secret(pg, run)


def test_globals_bring_back_a_dropped_role(
    pg: PostgresCluster, run_module: ModuleRunner, db_name: Any, tmp_path: Path
) -> None:
    role = f"rst_role_{secrets.token_hex(3)}"
    pg.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        source = db_name("gsrc")
        load_app_schema(pg.create_database(source), users=3, tasks_per_user=1)
        storage = f"file://{tmp_path / 'globals'}"
        backup_id = take_backup(run_module, pg, source, storage, globals=True)
        pg.execute(f"DROP ROLE {role}")
        target = db_name("gtarget")
        args = {"dsn": pg.dsn, "storage_url": storage, "backup": backup_id,
                "target_database": target, "globals": True}  # fmt: skip
        run = run_module("pg_restore", args)
        assert not run.failed, run.msg
        assert run.result["globals_restored"] is True
        assert pg.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", params=(role,)) == [(1,)]
        # the connecting role's own password was left alone: we can still connect
        assert pg.execute("SELECT 1") == [(1,)]
        warnings = " ".join(run.result.get("warnings", []))
        assert "left out 2 statement(s) about the connecting role" in warnings
    finally:
        pg.execute(f"DROP ROLE IF EXISTS {role}")


def test_password_is_kept_off_argv(
    pg: PostgresCluster, file_backup: Backup, db_name: Any, tmp_path: Path
) -> None:
    """While pg_restore runs, neither its argv nor its environment holds the password."""
    target = db_name("argv")
    runner = ModuleRunner(tmp_path / "argv-runs")
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            out = subprocess.run(
                ["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=False
            ).stdout
            seen.extend(line for line in out.splitlines() if "pg_restore" in line)
            stop.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run = runner("pg_restore", restore_args(pg, file_backup, target))
    finally:
        stop.set()
        watcher.join()
    assert not run.failed, run.msg
    assert not any(pg.password in line for line in seen)
    assert_no_secret(pg, run)


# =================================================================== interrupted runs


def _restoring_pid(target: str, timeout: float = 60.0) -> int:
    """The pid of the pg_restore that restores into target's scratch database, once it runs."""
    deadline = time.monotonic() + timeout
    marker = f"dbname={target}__opsbook_restore_"
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True, check=False
        ).stdout
        for line in out.splitlines():
            pid, _, args = line.strip().partition(" ")
            if "pg_restore" in args and marker in args:
                return int(pid)
        time.sleep(0.02)
    raise AssertionError(f"no pg_restore into {target} showed up")


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True  # dead, waiting to be reaped by its (new) parent
        time.sleep(0.05)
    return False


def test_sigterm_mid_restore_cleans_up_and_sigkill_leaves_no_child(
    pg: PostgresCluster, run_module: ModuleRunner, db_name: Any, tmp_path: Path
) -> None:
    source = db_name("sigsrc")
    load_pgbench(pg, source, scale=10)
    storage = f"file://{tmp_path / 'sig'}"
    backup_id = take_backup(run_module, pg, source, storage)
    args = {"dsn": pg.dsn, "storage_url": storage, "backup": backup_id}

    # SIGTERM: the module kills pg_restore, drops the scratch database and says so
    target = db_name("sigterm")
    proc, result_file = run_module.start("pg_restore", {**args, "target_database": target})
    restoring = _restoring_pid(target)
    module_pid = _parent_of(restoring)
    os.kill(module_pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    result = read_results(result_file)
    assert result["failed"] and "interrupted by SIGTERM" in result["msg"], output
    assert "was dropped" in result["msg"] and "was not created" in result["msg"]
    assert _gone(restoring)
    assert target not in databases(pg) and leftovers(pg, target) == set()

    # SIGKILL: no cleanup can run, but pg_restore dies with the module (PR_SET_PDEATHSIG)
    target = db_name("sigkill")
    proc, result_file = run_module.start("pg_restore", {**args, "target_database": target})
    restoring = _restoring_pid(target)
    os.kill(_parent_of(restoring), signal.SIGKILL)
    proc.communicate(timeout=120)
    assert _gone(restoring)
    scratch = leftovers(pg, target)
    assert len(scratch) == 1  # the half-restored scratch database is left behind ...
    left = scratch.pop()
    young = run_module("pg_restore", {**args, "target_database": target + "_y"})
    assert not young.failed, young.msg
    assert young.result["cleaned_up"] == [] and left in databases(pg)  # not stale yet (60 min)
    args["stale_after_minutes"] = 0
    run = run_module("pg_restore", {**args, "target_database": target}, check=True)
    assert not run.failed, run.msg
    assert [c["database"] for c in run.result["cleaned_up"]] == [left]  # would drop it
    assert left in databases(pg)  # ... but check mode drops nothing
    run = run_module("pg_restore", {**args, "target_database": target})
    assert not run.failed, run.msg
    (cleaned,) = run.result["cleaned_up"]  # ... and the next restore drops it, saying so
    assert cleaned["database"] == left and cleaned["backup"] == backup_id
    assert left not in databases(pg)
    warnings = " ".join(run.result.get("warnings", []))
    assert f"dropped scratch database {left!r} that an interrupted restore left" in warnings
