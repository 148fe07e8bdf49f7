"""Interrupted is not broken: backup, restore and migrate runs stopped at their worst moment.

Each run is stopped the way users and schedulers stop one: ``opsbook run --timeout`` and a
SIGTERM to ``opsbook run`` (SIGTERM to ansible-playbook, a grace period, then SIGKILL), a
SIGTERM or a Ctrl-C (SIGINT) to ansible-playbook itself (what an AWX cancel sends; Ansible
forwards it to its workers' process groups), and SIGKILL of every process of the run (no
cleanup can run). After each: what the run had started in storage or in the database is gone
- or, after a SIGKILL, found and removed by the next run, which says so -; no process of the
run is left (every run is started under tests/reaper.py, a subreaper that sees whatever
outlives the command, zombies included); and the database password - in the inventory's DSN -
is in no file under the run's HOME (``~/.ansible/tmp``: the module payloads) and TMPDIR.

The S3 endpoint is reached through tests/tcp_proxy.py, throttled, so that a backup is still
uploading when it is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from opsbook.lab import PostgresCluster
from opsbook.runner import find_run_processes
from tests.harness import PROJECT_ROOT, VENV_BIN, ansible_env, wait_for
from tests.lab import MotoS3Server, load_pgbench
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

BUCKET = "opsbook-test"
REAPER = PROJECT_ROOT / "tests" / "reaper.py"
GRACE_S = 20.0  # how long the reaper waits for what outlives the command
MIB = 1024 * 1024


# ----------------------------------------------------------------- running and stopping


@dataclass
class Outcome:
    rc: int
    left: list[str]
    settled_s: float
    output: str
    took_s: float


class Started:
    """A runbook run under the reaper: stop it, then collect what it left."""

    def __init__(self, proc: subprocess.Popen[str], marker: str, out: Path, started: float):
        self.proc = proc
        self.marker = marker
        self.out_path = out
        self.started = started
        first = proc.stdout.readline() if proc.stdout else ""
        assert first.startswith("pid "), first
        self.pid = int(first.split()[1])  # the command itself (ansible-playbook or opsbook)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill_everything(self) -> list[int]:
        """SIGKILL every process of the run (what is left once a grace period is over)."""
        pids = [p for p in find_run_processes(self.marker) if p != self.proc.pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def finish(self, timeout: float = 120) -> Outcome:
        assert self.proc.stdout is not None
        lines = self.proc.stdout.read().splitlines()
        self.proc.wait(timeout=timeout)
        report = json.loads(lines[-1])
        return Outcome(
            rc=report["rc"],
            left=report["left"],
            settled_s=report["settled_s"],
            output=self.out_path.read_text(errors="replace"),
            took_s=time.monotonic() - self.started,
        )


@pytest.fixture
def run_dirs(tmp_path: Path) -> dict[str, Path]:
    """The run's own HOME (~/.ansible/tmp is under it) and TMPDIR, scanned afterwards."""
    dirs = {"HOME": tmp_path / "home", "TMPDIR": tmp_path / "tmp"}
    for path in dirs.values():
        path.mkdir()
    return dirs


@pytest.fixture
def start(tmp_path: Path, run_dirs: dict[str, Path]) -> Callable[..., Started]:
    counter = iter(range(1000))

    def start_run(argv: list[str], extra_env: Mapping[str, str] | None = None) -> Started:
        n = next(counter)
        marker = f"test-{uuid.uuid4().hex[:12]}"
        out = tmp_path / f"run-{n}.log"
        env = ansible_env(tmp_path / "oplog.jsonl", {
            **{k: str(v) for k, v in run_dirs.items()},
            "OPSBOOK_RUN_ID": marker,  # every process of the run carries it
            "OPSBOOK_PROJECT_DIR": str(PROJECT_ROOT),
            "OPSBOOK_RUNS_DIR": str(tmp_path / "runs"),
            **(extra_env or {}),
        })  # fmt: skip
        with open(out, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, str(REAPER), str(GRACE_S), "--", *argv],
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        return Started(proc, marker, out, time.monotonic())

    return start_run


def playbook(name: str, inventory: Path, extra: Mapping[str, Any], tmp_path: Path) -> list[str]:
    path = tmp_path / f"extra-{name}-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(dict(extra)))
    return [str(VENV_BIN / "ansible-playbook"), f"playbooks/{name}.yml", "-i", str(inventory),
            "-e", f"@{path}"]  # fmt: skip




def files_holding(secret: str, *roots: Path) -> list[str]:
    """Regular files under roots whose bytes contain secret."""
    needle = secret.encode()
    found = []
    for root in roots:
        for path in root.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


def processes_running(needle: str) -> list[str]:
    """Live processes (not zombies) whose command line contains needle."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            found.append(f"{entry.name} {cmdline}")
    return found


# ----------------------------------------------------------------- the lab's pieces


@pytest.fixture(scope="module")
def source_db(pg: PostgresCluster) -> str:
    """A database whose compressed dump is about 20 MB (md5 text compresses about 2:1)."""
    name = f"intr_{uuid.uuid4().hex[:6]}"
    pg.create_database(name)
    pg.execute(
        "CREATE TABLE blobs AS SELECT g AS id, "
        "(SELECT string_agg(md5((g * 100 + i)::text), '') FROM generate_series(1, 40) i) AS body "
        "FROM generate_series(1, 16000) g",
        dbname=name,
    )
    yield name
    pg.drop_database(name)


@pytest.fixture(scope="module")
def restore_source(pg: PostgresCluster) -> str:
    """pgbench at scale 10: a restore whose pg_restore runs for a few seconds."""
    name = f"intr_rst_{uuid.uuid4().hex[:6]}"
    load_pgbench(pg, name, scale=10)
    yield name
    pg.drop_database(name)


@pytest.fixture
def slow_s3(s3: MotoS3Server) -> Iterator[TcpProxy]:
    """The S3 server behind a proxy forwarding 1.5 MiB/s: a backup is still uploading for
    several seconds (a slow but live link: the stall timeout never fires)."""
    with TcpProxy(s3.host, s3.port) as proxy:
        proxy.throttle(1.5 * MIB)
        yield proxy


def uploads(s3: MotoS3Server, prefix: str) -> list[dict[str, Any]]:
    resp = s3.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    return resp.get("Uploads", [])


def objects(s3: MotoS3Server, prefix: str) -> list[str]:
    resp = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def backup_inventory(
    make_inventory: Any, pg: PostgresCluster, db: str, endpoint: str, prefix: str
) -> Path:
    return make_inventory(
        env="intr",
        app_hosts=[],
        database_url=pg.dsn_for(db),
        backup_storage_url=f"s3://{BUCKET}/{prefix}",
        extra_vars={"s3_endpoint_url": endpoint},
    )


SLOW_BACKUP = {"pg_backup_part_size_mb": 5, "pg_backup_upload_concurrency": 1,
               "pg_backup_retention_enabled": False}  # fmt: skip


@dataclass
class SlowBackup:
    """A backup of source_db to S3 through the throttled proxy, under its own prefix."""

    s3: MotoS3Server
    proxy: TcpProxy
    prefix: str
    inventory: Path

    def uploading(self) -> None:
        """Until the backup's multipart upload runs and is recorded as opsbook's (its marker
        object: the one request between CreateMultipartUpload and the first part). A writer
        killed inside that request leaves an upload no one can tell from another tool's: the
        bucket's lifecycle rule (AbortIncompleteMultipartUpload) is what removes those."""

        def started() -> bool:
            recorded = any("/.opsbook-uploads/" in key for key in objects(self.s3, self.prefix))
            return recorded and uploads(self.s3, self.prefix) != []

        wait_for(started, 30, "the backup's multipart upload and its marker")

    def left_nothing(self) -> bool:
        return uploads(self.s3, self.prefix) == [] and objects(self.s3, self.prefix) == []


@pytest.fixture
def slow_backup(
    request: pytest.FixtureRequest,
    pg: PostgresCluster,
    s3: MotoS3Server,
    slow_s3: TcpProxy,
    source_db: str,
    make_inventory: Any,
) -> SlowBackup:
    prefix = f"intr-{request.node.name[5:25]}-{uuid.uuid4().hex[:6]}"
    inventory = backup_inventory(make_inventory, pg, source_db, slow_s3.url, prefix)
    return SlowBackup(s3, slow_s3, prefix, inventory)


def assert_clean(outcome: Outcome, password: str, run_dirs: dict[str, Path]) -> None:
    assert outcome.left == [], f"processes outlived the run: {outcome.left}"
    assert files_holding(password, *run_dirs.values()) == [], "the password reached the disk"


# ----------------------------------------------------------------- backups


def test_backup_stopped_by_opsbook_run_timeout_aborts_its_upload(
    pg: PostgresCluster,
    slow_backup: SlowBackup,
    start: Callable[..., Started],
    run_dirs: dict[str, Path],
) -> None:
    args = [f"{k}={v}" for k, v in SLOW_BACKUP.items()]
    run = start(
        [str(VENV_BIN / "opsbook"), "run", "backup", "--env", "intr", "--timeout", "6",
         *[x for a in args for x in ("-e", a)]],
        {"OPSBOOK_INVENTORY_ROOT": str(slow_backup.inventory.parent)},
    )  # fmt: skip
    slow_backup.uploading()
    outcome = run.finish()
    assert outcome.rc == 4  # timeout or canceled
    assert "Result: timeout (exit 4)" in outcome.output, outcome.output
    # SIGTERM at 6 s; the module aborted its upload at once, well within the 10 s grace
    assert outcome.took_s < 6 + 10, outcome.took_s
    assert slow_backup.left_nothing()
    assert_clean(outcome, pg.password, run_dirs)
    # the operation log has the run, written when the SIGTERM came
    line = json.loads((run_dirs["HOME"].parent / "oplog.jsonl").read_text().splitlines()[-1])
    assert (line["playbook"], line["status"]) == ("backup", "timeout")
    assert line["interrupted"] == "SIGTERM"


def test_backup_sigterm_to_ansible_playbook_aborts_its_upload(
    pg: PostgresCluster,
    slow_backup: SlowBackup,
    source_db: str,
    start: Callable[..., Started],
    run_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    run = start(playbook("backup", slow_backup.inventory, SLOW_BACKUP, tmp_path))
    slow_backup.uploading()
    run.signal(signal.SIGTERM)  # what an AWX cancel sends ansible-playbook
    outcome = run.finish()
    assert outcome.settled_s < 10  # the module cleaned up and was gone within seconds
    assert slow_backup.left_nothing()
    assert processes_running(f"dbname={source_db}") == []
    assert_clean(outcome, pg.password, run_dirs)


def test_backup_sigkilled_leaves_an_upload_that_the_next_backup_removes(
    pg: PostgresCluster,
    slow_backup: SlowBackup,
    start: Callable[..., Started],
    run_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    run = start(playbook("backup", slow_backup.inventory, SLOW_BACKUP, tmp_path))
    slow_backup.uploading()
    assert run.kill_everything()  # no cleanup can run
    outcome = run.finish()
    # pg_dump and zstd died with the module (PR_SET_PDEATHSIG): nothing outlived the kill
    assert_clean(outcome, pg.password, run_dirs)
    (left,) = uploads(slow_backup.s3, slow_backup.prefix)
    slow_backup.proxy.throttle(None)
    extra = {"pg_backup_stale_after_minutes": 0}
    outcome = start(playbook("backup", slow_backup.inventory, extra, tmp_path)).finish()
    assert outcome.rc == 0, outcome.output
    assert uploads(slow_backup.s3, slow_backup.prefix) == []  # the leftover was aborted ...
    assert left["UploadId"] in outcome.output  # ... and the run said which
    assert "what an interrupted backup left" in outcome.output
    assert any(k.endswith("/manifest.json") for k in objects(slow_backup.s3, slow_backup.prefix))
    assert_clean(outcome, pg.password, run_dirs)


# ----------------------------------------------------------------- restores


@pytest.fixture(scope="module")
def restore_backup(
    pg: PostgresCluster, restore_source: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """backup.yml of the pgbench database to file:// storage (restores fetch it fast)."""
    from tests.lab import write_inventory

    base = tmp_path_factory.mktemp("intr-restore")
    storage = base / "backups"
    storage.mkdir()
    inventory = write_inventory(
        base / "inventories" / "intr", [], None, database_url=pg.dsn_for(restore_source),
        backup_storage_url=f"file://{storage}", env="intr",
    )  # fmt: skip
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "playbooks/backup.yml", "-i", str(inventory)],
        cwd=PROJECT_ROOT, env=ansible_env(base / "oplog.jsonl"), capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return inventory


def scratch_of(pg: PostgresCluster, target: str) -> list[str]:
    rows = pg.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                      params=(target + "__opsbook_restore_%",))  # fmt: skip
    return [row[0] for row in rows]


def databases_named(pg: PostgresCluster, name: str) -> list[str]:
    return [row[0] for row in pg.execute(
        "SELECT datname FROM pg_database WHERE datname = %s", params=(name,))]  # fmt: skip


def test_restore_interrupted_by_ctrl_c_drops_its_scratch_database(
    pg: PostgresCluster,
    restore_backup: Path,
    start: Callable[..., Started],
    run_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    target = f"intr_int_{uuid.uuid4().hex[:6]}"
    run = start(playbook("restore", restore_backup, {"restore_target_database": target}, tmp_path))
    wait_for(lambda: processes_running(f"{target}__opsbook_restore_"), 60, "pg_restore")
    run.signal(signal.SIGINT)  # Ctrl-C at the terminal
    outcome = run.finish()
    assert outcome.settled_s < 10
    assert scratch_of(pg, target) == [] and databases_named(pg, target) == []
    assert processes_running(f"{target}__opsbook_restore_") == []
    assert_clean(outcome, pg.password, run_dirs)


def test_restore_sigkilled_leaves_a_scratch_database_that_the_next_restore_drops(
    pg: PostgresCluster,
    restore_backup: Path,
    start: Callable[..., Started],
    run_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    target = f"intr_kill_{uuid.uuid4().hex[:6]}"
    run = start(playbook("restore", restore_backup, {"restore_target_database": target}, tmp_path))
    wait_for(lambda: processes_running(f"{target}__opsbook_restore_"), 60, "pg_restore")
    assert run.kill_everything()
    outcome = run.finish()
    assert_clean(outcome, pg.password, run_dirs)  # pg_restore died with the module
    (scratch,) = scratch_of(pg, target)
    (work_dir,) = run_dirs["TMPDIR"].glob("opsbook-restore-*")  # its fetched archive stays
    again = start(playbook("restore", restore_backup, {
        "restore_target_database": target, "pg_restore_stale_after_minutes": 0}, tmp_path))
    outcome = again.finish()
    assert outcome.rc == 0, outcome.output
    assert scratch_of(pg, target) == [] and databases_named(pg, target) == [target]
    assert f"Dropped scratch databases that interrupted restores left: {scratch}" in (
        outcome.output
    )
    assert not work_dir.exists() and f"removed the work directory {work_dir}" in outcome.output
    assert_clean(outcome, pg.password, run_dirs)
    pg.drop_database(target)


# ----------------------------------------------------------------- migrations


@pytest.fixture
def migrate_db(pg: PostgresCluster) -> Iterator[str]:
    name = f"intr_mig_{uuid.uuid4().hex[:6]}"
    pg.create_database(name)
    yield name
    pg.drop_database(name)


def migrations(tmp_path: Path, sleep_s: int) -> Path:
    directory = tmp_path / f"migrations-{sleep_s}"
    directory.mkdir()
    (directory / "migration-001-create.sql").write_text("CREATE TABLE widgets (id int);\n")
    (directory / "migration-002-slow.sql").write_text(
        f"ALTER TABLE widgets ADD COLUMN name text;\nSELECT pg_sleep({sleep_s});\n"
    )
    return directory


def applied(pg: PostgresCluster, db: str) -> list[int]:
    rows = pg.execute(
        "SELECT version FROM opsbook.schema_migrations WHERE status = 'applied' ORDER BY 1",
        dbname=db,
    )
    return [int(r[0]) for r in rows]


def columns(pg: PostgresCluster, db: str) -> list[str]:
    return [r[0] for r in pg.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'widgets' "
        "ORDER BY ordinal_position", dbname=db)]  # fmt: skip


def lock_holders(pg: PostgresCluster, db: str) -> int:
    rows = pg.execute(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND d.datname = %s", params=(db,))  # fmt: skip
    return int(rows[0][0])


def sleeping_in(pg: PostgresCluster, db: str) -> bool:
    rows = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                      "AND query LIKE %s", params=(db, "%pg_sleep%"))  # fmt: skip
    return int(rows[0][0]) > 0


@pytest.mark.parametrize("how", ["sigterm", "sigkill", "sigterm-to-opsbook-run"])
def test_migration_interrupted_mid_way_is_rolled_back_and_the_lock_freed(
    how: str,
    pg: PostgresCluster,
    migrate_db: str,
    make_inventory: Any,
    start: Callable[..., Started],
    run_dirs: dict[str, Path],
    tmp_path: Path,
) -> None:
    inventory = make_inventory(env="intr", app_hosts=[], database_url=pg.dsn_for(migrate_db))
    extra = {"migrations_dir": str(migrations(tmp_path, 60))}
    if how == "sigterm-to-opsbook-run":
        run = start(
            [str(VENV_BIN / "opsbook"), "run", "db_migrate", "--env", "intr",
             "-e", f"migrations_dir={extra['migrations_dir']}"],
            {"OPSBOOK_INVENTORY_ROOT": str(inventory.parent)},
        )  # fmt: skip
    else:
        run = start(playbook("db_migrate", inventory, extra, tmp_path))
    wait_for(lambda: sleeping_in(pg, migrate_db), 60, "the slow migration to run")
    if how == "sigkill":
        assert run.kill_everything()
    else:  # ansible-playbook itself (an AWX cancel), or opsbook run (a scheduler's stop)
        run.signal(signal.SIGTERM)
    outcome = run.finish()
    assert_clean(outcome, pg.password, run_dirs)
    if how == "sigterm-to-opsbook-run":
        assert outcome.rc == 4 and "Result: canceled (exit 4)" in outcome.output
    # SIGTERM: the module cancelled its statement and rolled back; SIGKILL: the server saw
    # the client gone (client_connection_check_interval) and cancelled it - seconds, not 60
    wait_for(lambda: not sleeping_in(pg, migrate_db) and lock_holders(pg, migrate_db) == 0,
             10, "the statement to end and the advisory lock to be free")  # fmt: skip
    assert applied(pg, migrate_db) == [1]  # 002 was rolled back and not recorded
    assert columns(pg, migrate_db) == ["id"]
    extra = {"migrations_dir": str(migrations(tmp_path, 0))}
    outcome = start(playbook("db_migrate", inventory, extra, tmp_path)).finish()
    assert outcome.rc == 0, outcome.output
    assert applied(pg, migrate_db) == [1, 2] and columns(pg, migrate_db) == ["id", "name"]
