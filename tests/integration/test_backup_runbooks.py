"""playbooks/backup.yml, restore.yml and restore_drill.yml against the real lab.

PostgreSQL (each test works on databases of its own, made from the sample app schema), the S3
server (moto), file:// storage, and the 3 app hosts for maintenance mode. set_stats data is read
through the shared test callback (tests/integration/stats_helper.py). One backup of a source
database is taken by backup.yml once for the module; tests that restore or corrupt it work on
their own copy of its storage.
"""

from __future__ import annotations

import json
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import AppHost, PostgresCluster, http_get, load_app_schema
from tests.harness import ansible_env, run_ansible
from tests.integration.stats_helper import StatsRun, run_with_stats, stats_env
from tests.lab import MotoS3Server, app_table_checksums, write_inventory

pytestmark = pytest.mark.integration

BUCKET = "opsbook-test"
PG_DATABASE = "opsbook.runbooks.pg_database"
USERS, TASKS_PER_USER = 60, 4
SOURCE_COUNTS = {"public.users": USERS, "public.tasks": USERS * TASKS_PER_USER}


# =================================================================== helpers


def databases(pg: PostgresCluster) -> set[str]:
    return {row[0] for row in pg.execute("SELECT datname FROM pg_database")}


def drill_databases(pg: PostgresCluster) -> set[str]:
    return {name for name in databases(pg) if name.startswith("opsbook_drill_")}


def new_app_database(pg: PostgresCluster, name: str, users: int = USERS) -> str:
    dsn = pg.create_database(name)
    load_app_schema(dsn, users=users, tasks_per_user=TASKS_PER_USER)
    return dsn


def flip_a_byte(path: Path) -> None:
    """Same size, other content: only the sha256 can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def flags(app_hosts: list[AppHost]) -> dict[str, bool]:
    return {h.name: (h.shared_dir / "maintenance").exists() for h in app_hosts}


class StatusWatcher:
    """Polls GET /health of every app host in a thread while a playbook runs."""

    def __init__(self, hosts: list[AppHost], interval_s: float = 0.05) -> None:
        self.hosts = hosts
        self.interval_s = interval_s
        self.seen: dict[str, set[int | None]] = {h.name: set() for h in hosts}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for host in self.hosts:
                try:
                    status: int | None = http_get(f"{host.base_url}/health", timeout=2).status
                except OSError:
                    status = None
                self.seen[host.name].add(status)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> StatusWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def saw(self, status: int) -> set[str]:
        """Hosts that answered this status at least once."""
        return {name for name, statuses in self.seen.items() if status in statuses}


@pytest.fixture
def db_name(pg: PostgresCluster) -> Iterator[Callable[[str], str]]:
    """Unique database names for a test; every database starting with one is dropped after
    (the restored copies' __opsbook_old_ / __opsbook_restore_ siblings included)."""
    made: list[str] = []

    def make(label: str) -> str:
        name = f"bkr_{label}_{secrets.token_hex(3)}"
        made.append(name)
        return name

    yield make
    for name in databases(pg):
        if any(name.startswith(prefix) for prefix in made):
            pg.drop_database(name)


@pytest.fixture
def run(run_playbook: Any, tmp_path: Path) -> Callable[..., StatsRun]:
    def go(name: str, inventory: Path, extravars: dict[str, Any] | None = None, **kw: Any):
        return run_with_stats(run_playbook, tmp_path, name, inventory, extravars=extravars, **kw)

    return go


# =================================================================== the module's backup


@dataclass
class SourceBackup:
    database: str
    storage: Path
    backup_id: str
    checksums: dict[str, str]
    stats: dict[str, Any]


@pytest.fixture(scope="module")
def source_backup(
    pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SourceBackup]:
    """backup.yml of a source database (the sample schema) into a file:// storage, once."""
    work = tmp_path_factory.mktemp("backup-runbooks")
    database = f"bkr_src_{secrets.token_hex(3)}"
    dsn = new_app_database(pg, database)
    storage = work / "backups"
    storage.mkdir()
    inventory = write_inventory(
        work / "inventories" / "test",
        [],
        None,
        database_url=dsn,
        backup_storage_url=f"file://{storage}",
    )
    env, stats_file = stats_env(work)
    proc = run_ansible(
        ["playbooks/backup.yml", "-i", str(inventory)],
        env=ansible_env(work / "oplog.jsonl", env),
        timeout=600,
        tool="ansible-playbook",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stats = json.loads(stats_file.read_text())["custom"]["_run"]["backup"]
    yield SourceBackup(database, storage, stats["backup_id"], app_table_checksums(dsn), stats)
    pg.drop_database(database)


@pytest.fixture
def storage_copy(source_backup: SourceBackup, tmp_path: Path) -> Path:
    """This test's own copy of the module's backup storage (it may corrupt it)."""
    copy = tmp_path / "backups-copy"
    shutil.copytree(source_backup.storage, copy)
    return copy


# =================================================================== backup.yml


def test_backup_to_file_publishes_the_id_and_restores_identically(
    pg: PostgresCluster,
    source_backup: SourceBackup,
    make_inventory: Any,
    run: Any,
    db_name: Any,
) -> None:
    backup = source_backup.stats
    assert backup["backup_id"] == source_backup.backup_id
    assert backup["backup_id"].startswith(source_backup.database + "-")
    assert backup["database"] == source_backup.database
    assert backup["bytes"] > 0 and len(backup["sha256"]) == 64 and backup["duration_s"] >= 0
    assert backup["verified"] is True and backup["check_mode"] is False
    assert backup["deleted_by_retention"] == []
    assert backup["table_counts"] == SOURCE_COUNTS
    assert backup["encryption"] is None  # sse auto: none on file://
    manifest_path = source_backup.storage / backup["backup_id"] / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["sha256"] == backup["sha256"] and manifest["bytes"] == backup["bytes"]
    assert manifest["env"] == "local"
    assert (source_backup.storage / backup["backup_id"] / "verified.json").exists()

    # restore.yml into a new database: identical content; maintenance mode not involved
    target = db_name("copy")
    inventory = make_inventory(
        app_hosts=[],
        database_url=pg.dsn_for(source_backup.database),
        backup_storage_url=f"file://{source_backup.storage}",
    )
    result = run("restore", inventory, {"restore_target_database": target})
    assert result.rc == 0, result.output
    restore = result.stats["restore"]
    assert restore["ok"] is True and restore["restored"] is True and restore["mode"] == "new"
    assert restore["backup_id"] == backup["backup_id"]
    assert restore["table_counts_checked"] == 2 and restore["table_counts"] == SOURCE_COUNTS
    assert restore["maintenance"]["used"] is False
    assert app_table_checksums(pg.dsn_for(target)) == source_backup.checksums
    # the app's own database was not touched: no health check of the app (its plays match no
    # host), and the report says so
    assert "health_check" not in result.stats
    assert "Maintenance mode: not used (the app and its database were not touched)" in (
        restore["summary"]
    )
    assert backup["verified_by"] == "reread"  # file:// keeps no checksum: read back
    assert pg.password not in result.output


def test_backup_to_s3_encrypted_and_restore_identically(
    pg: PostgresCluster, s3: MotoS3Server, make_inventory: Any, run: Any, db_name: Any
) -> None:
    source = db_name("s3src")
    dsn = new_app_database(pg, source, users=25)
    prefix = f"runbooks-{secrets.token_hex(4)}"
    inventory = make_inventory(
        app_hosts=[], database_url=dsn, backup_storage_url=f"s3://{BUCKET}/{prefix}"
    )
    result = run("backup", inventory, {"opsbook_reason": "before the migration"})
    assert result.rc == 0, result.output
    backup = result.stats["backup"]
    backup_id = backup["backup_id"]
    assert backup["verified"] is True and backup["encryption"] == "AES256"
    assert backup["verified_by"] == "checksum"  # S3's own checksums, no second read
    client = s3.client()
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert f"{prefix}/{backup_id}/manifest.json" in keys
    assert f"{prefix}/{backup_id}/data.pgdump.zst" in keys
    head = client.head_object(Bucket=BUCKET, Key=f"{prefix}/{backup_id}/data.pgdump.zst")
    assert head["ServerSideEncryption"] == "AES256"
    manifest = json.loads(
        client.get_object(Bucket=BUCKET, Key=f"{prefix}/{backup_id}/manifest.json")["Body"].read()
    )
    assert manifest["reason"] == "before the migration" and manifest["sha256"] == backup["sha256"]

    target = db_name("s3copy")
    result = run("restore", inventory, {"restore_target_database": target})
    assert result.rc == 0, result.output
    assert result.stats["restore"]["backup_id"] == backup_id
    assert app_table_checksums(pg.dsn_for(target)) == app_table_checksums(dsn)


def test_backup_check_mode_writes_nothing(
    pg: PostgresCluster, make_inventory: Any, run: Any, tmp_path: Path
) -> None:
    storage = tmp_path / "empty-storage"
    storage.mkdir()
    inventory = make_inventory(
        app_hosts=[], database_url=pg.dsn_for("app"), backup_storage_url=f"file://{storage}"
    )
    result = run("backup", inventory, check=True)
    assert result.rc == 0, result.output
    backup = result.stats["backup"]
    assert backup["check_mode"] is True and backup["backup_id"].startswith("app-")
    assert backup["bytes"] is None and backup["verified"] is None
    assert backup["deleted_by_retention"] == []
    assert list(storage.iterdir()) == []
    assert "would be" in result.stdout


def test_backup_to_unusable_storage_fails_clearly(
    pg: PostgresCluster, make_inventory: Any, run: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    inventory = make_inventory(
        app_hosts=[], database_url=pg.dsn_for("app"), backup_storage_url=f"file://{blocker}/sub"
    )
    result = run("backup", inventory)
    assert result.rc != 0
    url = f"file://{blocker}/sub"
    # the module's message is the task's own failure line (issue 12: one failure, one line)
    assert (
        f"pg_backup: storage: {url} is not writable: Not a directory "
        f"({blocker}/sub); no backup was written (no manifest); the database and the existing "
        "backups are unchanged; retention did not run"
    ) in result.output
    assert "backup" not in result.stats
    assert blocker.read_text() == "not a directory\n"
    assert pg.password not in result.output


def test_retention_via_the_runbook_keeps_the_newest_verified(
    pg: PostgresCluster, make_inventory: Any, run: Any, db_name: Any, tmp_path: Path
) -> None:
    source = db_name("ret")
    dsn = new_app_database(pg, source, users=5)
    storage = tmp_path / "ret-backups"
    storage.mkdir()
    inventory = make_inventory(
        app_hosts=[], database_url=dsn, backup_storage_url=f"file://{storage}"
    )
    keep_one = {"pg_backup_keep_last": 1, "pg_backup_keep_daily": 0}

    first = run("backup", inventory, keep_one)
    assert first.rc == 0, first.output
    b1 = first.stats["backup"]["backup_id"]
    assert first.stats["backup"]["deleted_by_retention"] == []

    # b2 is not verified: b1 stays the newest verified backup, so neither is deleted
    second = run("backup", inventory, {**keep_one, "pg_backup_verify": False})
    assert second.rc == 0, second.output
    b2 = second.stats["backup"]["backup_id"]
    assert second.stats["backup"]["verified"] is None
    assert second.stats["backup"]["deleted_by_retention"] == []
    assert sorted(p.name for p in storage.iterdir()) == sorted([b1, b2])

    # --check shows what retention would delete, deletes nothing
    dry = run("backup", inventory, keep_one, check=True)
    assert dry.rc == 0, dry.output
    assert dry.stats["backup"]["would_delete_by_retention"] == []  # b2 is still unverified
    assert sorted(p.name for p in storage.iterdir()) == sorted([b1, b2])

    # b3 is verified: keep last 1 now deletes b1 and b2
    third = run("backup", inventory, keep_one)
    assert third.rc == 0, third.output
    b3 = third.stats["backup"]["backup_id"]
    assert sorted(third.stats["backup"]["deleted_by_retention"]) == sorted([b1, b2])
    assert third.stats["backup"]["kept_by_retention"] == [b3]
    assert [p.name for p in storage.iterdir()] == [b3]


# =================================================================== restore.yml


def test_restore_replace_without_confirm_is_refused_before_maintenance(
    pg: PostgresCluster,
    app_hosts: list[AppHost],
    source_backup: SourceBackup,
    storage_copy: Path,
    make_inventory: Any,
    run: Any,
    db_name: Any,
) -> None:
    target = db_name("live")
    dsn = new_app_database(pg, target, users=7)
    before = app_table_checksums(dsn)
    inventory = make_inventory(database_url=dsn, backup_storage_url=f"file://{storage_copy}")
    with StatusWatcher(app_hosts) as watcher:
        result = run(
            "restore",
            inventory,
            {"restore_mode": "replace", "restore_backup": source_backup.backup_id},
        )
    assert result.rc != 0
    assert "Restore refused: mode=replace replaces database " + target in result.output
    assert f"-e confirm={target}" in result.output
    assert "maintenance mode was not switched on and no database was touched" in result.output
    assert watcher.saw(503) == set() and watcher.saw(200) == {h.name for h in app_hosts}
    assert flags(app_hosts) == {h.name: False for h in app_hosts}
    assert app_table_checksums(dsn) == before
    assert {n for n in databases(pg) if n.startswith(target)} == {target}
    assert "restore" not in result.stats  # refused in the preflight: nothing to report

    # a confirm naming another database is refused just the same
    wrong = run(
        "restore",
        inventory,
        {"restore_mode": "replace", "confirm": "app", "restore_backup": source_backup.backup_id},
    )
    assert wrong.rc != 0 and "does not equal the name of the target database" in wrong.output
    assert flags(app_hosts) == {h.name: False for h in app_hosts}


def test_restore_replace_with_confirm_uses_maintenance_and_checks_health(
    pg: PostgresCluster,
    app_hosts: list[AppHost],
    source_backup: SourceBackup,
    storage_copy: Path,
    make_inventory: Any,
    run: Any,
    db_name: Any,
) -> None:
    target = db_name("live")
    dsn = new_app_database(pg, target, users=7)
    before = app_table_checksums(dsn)
    inventory = make_inventory(database_url=dsn, backup_storage_url=f"file://{storage_copy}")
    with StatusWatcher(app_hosts) as watcher:
        result = run(
            "restore",
            inventory,
            {
                "restore_mode": "replace",
                "confirm": target,
                "restore_source_database": source_backup.database,
            },
        )
    assert result.rc == 0, result.output
    names = {h.name for h in app_hosts}
    assert watcher.saw(503) == names  # maintenance mode went on ...
    assert flags(app_hosts) == {h.name: False for h in app_hosts}  # ... and off
    assert all(h.health().status == 200 for h in app_hosts)
    assert app_table_checksums(dsn) == source_backup.checksums

    restore = result.stats["restore"]
    assert restore["ok"] is True and restore["restored"] is True and restore["mode"] == "replace"
    assert restore["backup_id"] == source_backup.backup_id
    assert restore["target_database"] == target
    assert restore["table_counts_checked"] == 2 and restore["table_counts"] == SOURCE_COUNTS
    maintenance = restore["maintenance"]
    assert maintenance["used"] is True
    assert set(maintenance["switched_on"]) == names and set(maintenance["switched_off"]) == names
    assert maintenance["left_on"] == []
    previous = restore["previous_database"]
    assert previous.startswith(target + "__opsbook_old_") and previous in databases(pg)
    assert app_table_checksums(pg.dsn_for(previous)) == before  # the safety net
    # the health check ran after the restore
    health = result.stats["health_check"]
    assert health["verdict"] == "ok" and set(health["apps"]) == names
    assert health["database"]["database_name"] == target
    assert pg.password not in result.output


def test_failed_restore_switches_maintenance_off_and_leaves_the_database(
    pg: PostgresCluster,
    app_hosts: list[AppHost],
    source_backup: SourceBackup,
    storage_copy: Path,
    make_inventory: Any,
    run: Any,
    db_name: Any,
) -> None:
    flip_a_byte(storage_copy / source_backup.backup_id / "data.pgdump.zst")
    target = db_name("live")
    dsn = new_app_database(pg, target, users=7)
    before = app_table_checksums(dsn)
    inventory = make_inventory(database_url=dsn, backup_storage_url=f"file://{storage_copy}")
    with StatusWatcher(app_hosts) as watcher:
        result = run(
            "restore",
            inventory,
            {
                "restore_mode": "replace",
                "confirm": target,
                "restore_backup": source_backup.backup_id,
            },
        )
    assert result.rc != 0
    out = result.output
    assert f"Restore of backup {source_backup.backup_id} into database {target} failed" in out
    assert "is corrupted" in out
    assert f"The previous database {target} was left in place, unchanged." in out
    assert "Maintenance mode was switched off again on app1, app2, app3." in out
    names = {h.name for h in app_hosts}
    assert watcher.saw(503) == names
    assert flags(app_hosts) == {h.name: False for h in app_hosts}
    assert all(h.health().status == 200 for h in app_hosts)
    assert app_table_checksums(dsn) == before
    assert {n for n in databases(pg) if n.startswith(target)} == {target}
    restore = result.stats["restore"]
    assert restore["ok"] is False and restore["restored"] is False
    assert set(restore["maintenance"]["switched_off"]) == names
    assert "health_check" not in result.stats  # the run stops at the failed restore


def test_maintenance_that_does_not_take_effect_stops_the_restore(
    pg: PostgresCluster,
    app_hosts: list[AppHost],
    source_backup: SourceBackup,
    storage_copy: Path,
    make_inventory: Any,
    run: Any,
    db_name: Any,
) -> None:
    """A flag the app does not read (wrong path): the app keeps answering 200, so the flag is
    removed again on every host and nothing is restored."""
    target = db_name("live")
    dsn = new_app_database(pg, target, users=7)
    before = app_table_checksums(dsn)
    inventory = make_inventory(database_url=dsn, backup_storage_url=f"file://{storage_copy}")
    with StatusWatcher(app_hosts) as watcher:
        result = run(
            "restore",
            inventory,
            {
                "restore_mode": "replace",
                "confirm": target,
                "restore_backup": source_backup.backup_id,
                "app_maintenance_flag_path": "{{ deploy_root }}/shared/not-the-flag",
                "app_maintenance_retries": 0,
            },
        )
    assert result.rc != 0
    out = result.output
    assert "maintenance mode could not be switched on on app1, app2, app3" in out
    assert "so nothing was restored" in out
    assert f"The previous database {target} was left in place, unchanged." in out
    assert watcher.saw(503) == set()
    assert not any((h.shared_dir / "not-the-flag").exists() for h in app_hosts)
    assert app_table_checksums(dsn) == before
    assert {n for n in databases(pg) if n.startswith(target)} == {target}
    restore = result.stats["restore"]
    assert restore["ok"] is False and restore["restored"] is False
    assert restore["maintenance"]["switched_on"] == []


def test_production_requires_confirm_even_for_a_new_database(
    pg: PostgresCluster,
    source_backup: SourceBackup,
    storage_copy: Path,
    make_inventory: Any,
    run: Any,
    db_name: Any,
) -> None:
    inventory = make_inventory(
        app_hosts=[],
        database_url=pg.dsn_for(source_backup.database),
        backup_storage_url=f"file://{storage_copy}",
        extra_vars={"opsbook_env": "production"},
    )
    target = db_name("prodcopy")
    refused = run("restore", inventory, {"restore_target_database": target})
    assert refused.rc != 0
    assert "opsbook_env is production: every restore" in refused.output
    assert f"-e confirm={target}" in refused.output
    assert target not in databases(pg)

    # the latest backup started at or before now: the module's source backup
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    done = run(
        "restore",
        inventory,
        {"restore_target_database": target, "confirm": target, "restore_before": now},
    )
    assert done.rc == 0, done.output
    assert done.stats["restore"]["backup_id"] == source_backup.backup_id
    assert app_table_checksums(pg.dsn_for(target)) == source_backup.checksums


def test_restore_check_mode_changes_nothing(
    pg: PostgresCluster,
    app_hosts: list[AppHost],
    source_backup: SourceBackup,
    storage_copy: Path,
    make_inventory: Any,
    run: Any,
    db_name: Any,
) -> None:
    target = db_name("live")
    dsn = new_app_database(pg, target, users=7)
    before = app_table_checksums(dsn)
    names_before = databases(pg)
    inventory = make_inventory(database_url=dsn, backup_storage_url=f"file://{storage_copy}")
    with StatusWatcher(app_hosts) as watcher:
        result = run(
            "restore",
            inventory,
            {
                "restore_mode": "replace",
                "confirm": target,
                "restore_backup": source_backup.backup_id,
            },
            check=True,
        )
    assert result.rc == 0, result.output
    assert watcher.saw(503) == set()
    assert flags(app_hosts) == {h.name: False for h in app_hosts}
    assert app_table_checksums(dsn) == before
    assert databases(pg) == names_before
    restore = result.stats["restore"]
    assert restore["check_mode"] is True and restore["ok"] is True
    assert restore["restored"] is False and restore["actions"]
    assert "Dry run (--check)" in result.stdout


# =================================================================== restore_drill.yml


def test_restore_drill_measures_rto_and_rpo_and_drops_the_scratch_database(
    pg: PostgresCluster,
    source_backup: SourceBackup,
    storage_copy: Path,
    make_inventory: Any,
    run: Any,
) -> None:
    inventory = make_inventory(
        app_hosts=[],
        database_url=pg.dsn_for(source_backup.database),
        backup_storage_url=f"file://{storage_copy}",
    )
    drills_before = drill_databases(pg)
    started = time.time()
    result = run("restore_drill", inventory)
    assert result.rc == 0, result.output
    drill = result.stats["restore_drill"]
    assert drill["ok"] is True and drill["problems"] == []
    assert drill["backup_id"] == source_backup.backup_id
    assert drill["backup_verified_before"] is True  # backup.yml verified it
    assert drill["verified"] is True and drill["tables_checked"] == 2
    assert drill["table_counts"] == SOURCE_COUNTS
    assert 0 < drill["rto_s"] < time.time() - started
    manifest = json.loads((storage_copy / source_backup.backup_id / "manifest.json").read_text())
    assert drill["backup_started"] == manifest["started"]
    assert 0 < drill["rpo_s"] < time.time() - source_backup_started(manifest) + 1
    assert drill["scratch_database"].startswith("opsbook_drill_")
    assert drill["dropped"] is True
    assert drill_databases(pg) == drills_before
    assert "Restore drill: PASSED" in result.stdout
    assert pg.password not in result.output

    # --check: the backup is fetched and checked, nothing is restored
    dry = run("restore_drill", inventory, check=True)
    assert dry.rc == 0, dry.output
    drill = dry.stats["restore_drill"]
    assert drill["check_mode"] is True and drill["verified"] is False and drill["rto_s"] is None
    assert drill_databases(pg) == drills_before

    # a threshold crossed fails the drill, which still restores, verifies and drops
    strict = run("restore_drill", inventory, {"restore_drill_max_rpo_s": 1})
    assert strict.rc != 0
    drill = strict.stats["restore_drill"]
    assert drill["ok"] is False and drill["verified"] is True and drill["dropped"] is True
    assert "over the limit of 1.0 s (restore_drill_max_rpo_s)" in strict.output
    assert drill_databases(pg) == drills_before


def source_backup_started(manifest: dict[str, Any]) -> float:
    return datetime.fromisoformat(manifest["started"].replace("Z", "+00:00")).timestamp()


def test_restore_drill_on_a_corrupted_latest_backup_fails_and_still_drops(
    pg: PostgresCluster,
    source_backup: SourceBackup,
    storage_copy: Path,
    make_inventory: Any,
    run: Any,
) -> None:
    flip_a_byte(storage_copy / source_backup.backup_id / "data.pgdump.zst")
    inventory = make_inventory(
        app_hosts=[],
        database_url=pg.dsn_for(source_backup.database),
        backup_storage_url=f"file://{storage_copy}",
    )
    drills_before = drill_databases(pg)
    result = run("restore_drill", inventory)
    assert result.rc != 0
    drill = result.stats["restore_drill"]
    assert drill["ok"] is False and drill["verified"] is False and drill["dropped"] is True
    assert drill["backup_id"] == source_backup.backup_id
    assert "is corrupted" in drill["msg"]
    assert "Restore drill FAILED: restore failed: " in result.output
    assert drill_databases(pg) == drills_before
    assert not any(n.startswith(drill["scratch_database"]) for n in databases(pg))


# =================================================================== pg_database (the drill's drop)


def test_pg_database_drops_only_scratch_databases_unless_confirmed(
    pg: PostgresCluster, tmp_path: Path, db_name: Any
) -> None:
    scratch = f"opsbook_drill_{secrets.token_hex(4)}"
    other = db_name("keep")
    pg.create_database(other)
    dsn = pg.dsn_for("app")
    tasks: list[dict[str, Any]] = [
        {PG_DATABASE: {"dsn": dsn, "name": scratch, "state": "present"}},
        {PG_DATABASE: {"dsn": dsn, "name": scratch, "state": "present"}},
        {PG_DATABASE: {"dsn": dsn, "name": other, "state": "absent"}},
        {PG_DATABASE: {"dsn": dsn, "name": other, "state": "absent", "confirm": "app"}},
        {
            PG_DATABASE: {
                "dsn": dsn,
                "name": "template1",
                "state": "absent",
                "confirm": "template1",
            }
        },
        {PG_DATABASE: {"dsn": dsn, "name": scratch, "state": "absent"}, "check_mode": True},
        {PG_DATABASE: {"dsn": dsn, "name": scratch, "state": "absent"}},
        {PG_DATABASE: {"dsn": dsn, "name": scratch, "state": "absent"}},
        {PG_DATABASE: {"dsn": dsn, "name": other, "state": "absent", "confirm": other}},
    ]
    registered = ", ".join(f"r{i}" for i in range(len(tasks)))
    play = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {
                    "name": f"Step {i}",
                    **task,
                    "register": f"r{i}",
                    "ignore_errors": True,
                    "no_log": True,
                }
                for i, task in enumerate(tasks)
            ]
            + [
                {
                    "name": "Save the results",
                    "ansible.builtin.copy": {
                        "content": "{{ [" + registered + "] | to_json }}",
                        "dest": str(tmp_path / "results.json"),
                        "mode": "0600",
                    },
                }
            ],
        }
    ]
    playbook = tmp_path / "pg_database.yml"
    playbook.write_text(json.dumps(play))
    proc = run_ansible(
        [str(playbook), "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter={{ ansible_playbook_python }}"],
        env=ansible_env(tmp_path / "oplog.jsonl"),
        tool="ansible-playbook",
    )  # fmt: skip
    assert (tmp_path / "results.json").exists(), proc.stdout + proc.stderr
    r = json.loads((tmp_path / "results.json").read_text())
    assert r[0]["changed"] is True and r[0]["created"] is True
    assert r[1]["changed"] is False and r[1]["exists"] is True
    assert r[2]["failed"] and "is not a scratch database" in r[2]["msg"]
    assert "nothing was dropped" in r[2]["msg"]
    assert r[3]["failed"] and "does not equal the name of the database" in r[3]["msg"]
    assert r[4]["failed"] and "system database" in r[4]["msg"]
    assert r[5]["changed"] is True and r[5]["dropped"] == [scratch]  # check mode: would drop
    assert r[6]["changed"] is True and r[6]["dropped"] == [scratch]
    assert r[7]["changed"] is False and r[7]["exists"] is False
    assert r[8]["changed"] is True and r[8]["dropped"] == [other]
    assert scratch not in databases(pg) and other not in databases(pg)
    assert pg.password not in proc.stdout + proc.stderr
