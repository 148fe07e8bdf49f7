"""The backup storage failing under the runbooks, and role inputs of the wrong type.

- S3 lost while restore.yml fetches the backup (the endpoint reached through
  tests/tcp_proxy.py, throttled, then killed mid-download): the restore fails before the
  server is touched, saying the storage went away; no database is created, nothing is left in
  the work directory.
- A full ``file://`` backup store (a small tmpfs, filled): backup.yml fails cleanly - no
  partial object listed or left, the previous backup intact, the message naming the disk.
- Role inputs of the wrong type or range given with -e (``pg_backup_keep_last=-1``,
  ``pg_restore_jobs=two``): refused by the preflight before anything is touched, naming the
  input.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import PostgresCluster
from tests.integration.faults import Injector, fill, small_filesystem
from tests.integration.stats_helper import run_with_stats
from tests.lab import MotoS3Server
from tests.loaders import load_module_utils
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

BUCKET = "opsbook-test"
KIB = 1024

storage_utils = load_module_utils("opsbook_storage")
backup_utils = load_module_utils("opsbook_backup")


def databases(pg: PostgresCluster) -> set[str]:
    return {row[0] for row in pg.execute("SELECT datname FROM pg_database")}


# ----------------------------------------------------------------- S3 lost mid-fetch


@pytest.fixture(scope="module")
def s3_source(pg: PostgresCluster) -> Iterator[str]:
    """A database whose backup is about 1 MiB (random md5 text, 2:1 for zstd)."""
    name = f"flt_s3_{uuid.uuid4().hex[:6]}"
    pg.create_database(name)
    pg.execute(
        "CREATE TABLE blobs AS SELECT g AS id, md5(random()::text) || md5(random()::text) AS body "
        "FROM generate_series(1, 32000) g",
        dbname=name,
    )
    yield name
    pg.drop_database(name)


def test_s3_lost_mid_fetch_fails_the_restore_before_the_server_is_touched(
    pg: PostgresCluster,
    s3: MotoS3Server,
    s3_source: str,
    make_inventory: Any,
    run_playbook: Any,
    tmp_path: Path,
) -> None:
    prefix = f"flt-fetch-{uuid.uuid4().hex[:6]}"
    stored = make_inventory(
        env="faults", app_hosts=[], database_url=pg.dsn_for(s3_source),
        backup_storage_url=f"s3://{BUCKET}/{prefix}",
    )  # fmt: skip
    backup = run_playbook("backup", stored, {"pg_backup_retention_enabled": False})
    assert backup.returncode == 0, backup.stdout + backup.stderr
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    target = f"flt_s3_new_{uuid.uuid4().hex[:6]}"
    before = databases(pg)
    with TcpProxy(s3.host, s3.port) as proxy:
        proxy.throttle(256 * KIB)  # about 4 s for the data object
        inventory = make_inventory(
            env="faults", app_hosts=[], database_url=pg.dsn_for(s3_source),
            backup_storage_url=f"s3://{BUCKET}/{prefix}",
            extra_vars={"s3_endpoint_url": proxy.url},
        )  # fmt: skip
        # the catalog and the manifest are a few KiB: past 300 KiB the data object flows
        killer = Injector(lambda: proxy.forwarded > 300 * KIB, proxy.kill)
        with killer:
            run = run_with_stats(
                run_playbook, tmp_path, "restore", inventory,
                extravars={"restore_target_database": target, "pg_restore_work_dir": str(work_dir)},
            )  # fmt: skip
        killer.check(run.output)
    assert run.rc != 0
    assert databases(pg) == before  # no target, no scratch database: the server untouched
    assert list(work_dir.iterdir()) == []  # the partial download removed
    assert (
        f"/data.pgdump.zst: GetObject failed: the S3 endpoint {proxy.url} is unreachable"
        in run.stats["restore"]["msg"]
    )
    assert f"the target database '{target}' was not touched (it was not created)" in run.output


# ----------------------------------------------------------------- a full backup store


def store_files(store: Path) -> dict[str, str]:
    """Everything under the store, by relative path: a file's sha256, a directory's "dir"."""
    return {
        str(path.relative_to(store)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        )
        for path in sorted(store.rglob("*"))
    }


def test_full_backup_store_fails_the_backup_cleanly(
    pg: PostgresCluster, make_inventory: Any, run_playbook: Any, tmp_path: Path
) -> None:
    with small_filesystem(tmp_path / "disk", 2048) as disk:
        store = disk / "backups"
        store.mkdir()
        inventory = make_inventory(env="faults", app_hosts=[], backup_storage_url=f"file://{store}")
        first = run_with_stats(run_playbook, tmp_path, "backup", inventory)
        assert first.rc == 0, first.output
        first_id = first.stats["backup"]["backup_id"]
        kept = store_files(store)
        fill(disk, leave_bytes=16 * KIB)  # the next dump (about 35 KiB) cannot fit
        run = run_with_stats(run_playbook, tmp_path, "backup", inventory)
        assert run.rc != 0
        # nothing of the failed backup is left or listed; the previous one is intact
        assert store_files(store) == kept
        catalog = backup_utils.list_catalog(storage_utils.open_storage(f"file://{store}"))
        assert [b.backup_id for b in catalog.backups] == [first_id]
        assert (catalog.orphans, catalog.invalid) == ([], [])
        assert catalog.backups[0].verification["ok"] is True
    # the message names the disk and what was left as it was
    assert f"pg_backup: storage: file://{store}/app-" in run.output
    assert "/data.pgdump.zst: writing failed after 0 bytes: No space left on device" in run.output
    assert "no backup was written (no manifest)" in run.output
    assert "the database and the existing backups are unchanged; retention did not run" in (
        run.output
    )


# ----------------------------------------------------------------- role inputs of the wrong type


def test_role_inputs_of_the_wrong_type_are_refused_before_anything_is_touched(
    pg: PostgresCluster, make_inventory: Any, run_playbook: Any, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    inventory = make_inventory(env="faults", app_hosts=[], backup_storage_url=f"file://{store}")
    backup = run_playbook("backup", inventory, args=("-e", "pg_backup_keep_last=-1"))
    out = backup.stdout + backup.stderr
    assert backup.returncode != 0
    assert (
        "backup refused, nothing was changed: 1 problem with its inputs: (1) "
        "pg_backup_keep_last='-1' is out of range: the role input pg_backup_keep_last takes a "
        "whole number of at least 0" in out
    )
    # the module never ran
    assert "TASK [opsbook.runbooks.pg_backup : backup | Dump, store" not in out
    assert list(store.iterdir()) == []

    before = databases(pg)
    restore = run_playbook(
        "restore", inventory,
        args=("-e", "pg_restore_jobs=two", "-e", "pg_restore_stale_after_minutes=-5",
              "-e", "restore_target_database=flt_never"),
    )  # fmt: skip
    out = restore.stdout + restore.stderr
    assert restore.returncode != 0
    assert "restore refused, nothing was changed: 2 problems with its inputs: " in out
    assert (
        "pg_restore_jobs='two' is not valid: the role input pg_restore_jobs takes a whole "
        "number of at least 1" in out
    )
    assert (
        "pg_restore_stale_after_minutes='-5' is out of range: the role input "
        "pg_restore_stale_after_minutes takes a whole number of at least 0" in out
    )
    assert "TASK [opsbook.runbooks.pg_restore : restore | Restore the backup" not in out
    assert databases(pg) == before
